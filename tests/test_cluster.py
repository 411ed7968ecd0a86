"""Cluster definitions: valid against their real schemas (Ray's cluster-config schema and EC2's RunInstances
for the launcher, KubeRay's v1 CRDs for the Kubernetes files), and in agreement with the project: the image
tag with pyproject.toml, Ray and torch with the lock, every job command with the jobs' own parsers."""

import copy
import gzip
import re
import shlex
import tomllib
from pathlib import Path

import jsonschema
import pytest
import yaml
from packaging.specifiers import SpecifierSet

from realfill.cli import parse

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
KUBERAY_SCHEMAS = Path(__file__).parent / "schemas" / "kuberay-v1.7.0"
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
IMAGE = f"REGISTRY/realfill:{PROJECT['version']}"


def load(name: str) -> dict:
    return yaml.safe_load((CLUSTER / name).read_text())


def locked(name: str) -> str:
    """The version constraints.txt pins for a package (one line, no markers, for the ones asked here)."""
    match = re.search(rf"^{name}==(\S+)$", (REPO / "constraints.txt").read_text(), re.MULTILINE)
    assert match, f"{name} is not pinned in constraints.txt"
    return match.group(1)


def commented_commands(name: str) -> list[list[str]]:
    """The `python -m jobs...` commands a file's header comment tells people to run, as argument lists."""
    text = "\n".join(line.removeprefix("#").strip() for line in (CLUSTER / name).read_text().splitlines()
                     if line.startswith("#"))
    text = text.replace("\\\n", " ")
    return [shlex.split(line[line.index("python -m jobs."):].split("#")[0])
            for line in text.splitlines() if "python -m jobs." in line]


def assert_is_gpu_run(words: list[str]) -> None:
    """A job command that an autoscaling cluster with no GPU node yet can run: valid flags, GPU needs given."""
    assert words[:2] == ["python", "-m"] and words[2] in ("jobs.fill_library", "jobs.realbench_sweep"), words
    assert (REPO / (words[2].replace(".", "/") + ".py")).is_file()
    args = parse([{"jobs.fill_library": "library", "jobs.realbench_sweep": "sweep"}[words[2]], *words[3:]])[1]
    assert args.gpus_per_tune == 1 and args.gpus_per_sampler == 1, words
    assert args.out.startswith("s3://")


# --- the Ray cluster launcher -------------------------------------------------------------------


def test_aws_launcher_passes_rays_own_validation():
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(load("aws.yaml"))))


def test_aws_node_configs_are_valid_run_instances_requests():
    """Ray hands node_config to EC2's RunInstances: botocore's model of that call checks every field."""
    import botocore.session
    from botocore.validate import ParamValidator

    shape = botocore.session.get_session().get_service_model("ec2").operation_model("RunInstances").input_shape
    launcher = load("aws.yaml")
    for name, node_type in launcher["available_node_types"].items():
        report = ParamValidator().validate({**node_type["node_config"], "MinCount": 1, "MaxCount": 1}, shape)
        assert not report.has_errors(), f"{name}: {report.generate_report()}"
    misspelt = {**launcher["available_node_types"]["head"]["node_config"], "InstanceTyp": "m6i.large"}
    assert ParamValidator().validate({**misspelt, "MinCount": 1, "MaxCount": 1}, shape).has_errors()


def test_aws_workers_can_write_s3_and_the_cache_volume():
    launcher = load("aws.yaml")
    worker = launcher["available_node_types"]["gpu_worker"]["node_config"]
    profile = worker["IamInstanceProfile"]["Name"]
    header = (CLUSTER / "aws.yaml").read_text()
    assert f"--instance-profile-name {profile}" in header, "the header says how to make the workers' profile"
    for policy in re.findall(r"file://cluster/(\S+\.json)", header):
        assert (CLUSTER / policy).is_file(), policy
    s3 = yaml.safe_load((CLUSTER / "aws-worker-s3-policy.json").read_text())
    actions = {action for statement in s3["Statement"] for action in statement["Action"]}
    assert {"s3:GetObject", "s3:PutObject", "s3:ListBucket"} <= actions
    assert any("-v /mnt/cache:/mnt/cache" in option for option in launcher["docker"]["run_options"])
    assert any("chown 1000:100 /mnt/cache" in command for command in launcher["initialization_commands"])


# --- KubeRay --------------------------------------------------------------------------------------


def strict(schema):
    """A CRD schema that rejects unknown fields (Kubernetes would silently prune them)."""
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    schema = {key: strict(value) for key, value in schema.items()}
    if (schema.get("type") == "object" and isinstance(schema.get("properties"), dict)
            and "additionalProperties" not in schema and not schema.get("x-kubernetes-preserve-unknown-fields")):
        schema["additionalProperties"] = False
    return schema


def kuberay_validator(kind: str) -> jsonschema.Draft7Validator:
    with gzip.open(KUBERAY_SCHEMAS / f"ray.io_{kind.lower()}s.yaml.gz") as handle:
        crd = yaml.load(handle, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    assert crd["spec"]["names"]["kind"] == kind
    version = next(version for version in crd["spec"]["versions"] if version["name"] == "v1")
    return jsonschema.Draft7Validator(strict(version["schema"]["openAPIV3Schema"]))


@pytest.mark.parametrize("name,kind", [("kuberay/raycluster.yaml", "RayCluster"), ("kuberay/rayjob.yaml", "RayJob")])
def test_kuberay_files_match_the_kuberay_v1_crds(name, kind):
    document = load(name)
    assert (document["apiVersion"], document["kind"]) == ("ray.io/v1", kind)
    validator = kuberay_validator(kind)
    errors = [f"{'.'.join(map(str, error.absolute_path))}: {error.message}"
              for error in validator.iter_errors(document)]
    assert not errors, "\n".join(errors)
    misspelt = copy.deepcopy(document)
    spec = misspelt["spec"] if kind == "RayCluster" else misspelt["spec"]["rayClusterSpec"]
    spec["headGroupSpec"]["rayStartParam"] = spec["headGroupSpec"].pop("rayStartParams")
    assert not validator.is_valid(misspelt), "the schema check must reject unknown fields"


def pod_templates(name: str) -> list[dict]:
    spec = load(name)["spec"]
    spec = spec.get("rayClusterSpec", spec)
    return [spec["headGroupSpec"]["template"]["spec"]] + [group["template"]["spec"]
                                                          for group in spec["workerGroupSpecs"]]


def test_kuberay_pods_share_the_cache_volume_and_the_s3_secret():
    cluster, job = pod_templates("kuberay/raycluster.yaml"), pod_templates("kuberay/rayjob.yaml")
    for pod in cluster + job:
        container = pod["containers"][0]
        assert pod["volumes"] == cluster[-1]["volumes"] and pod["securityContext"] == cluster[-1]["securityContext"]
        assert {"name": "cache", "mountPath": "/mnt/cache"} in container["volumeMounts"]
        assert container["envFrom"] == [{"secretRef": {"name": "realfill-s3"}}]
    assert "kubectl create secret generic realfill-s3" in (CLUSTER / "kuberay" / "raycluster.yaml").read_text()


# --- agreement with the project -------------------------------------------------------------------


def images() -> list[str]:
    found = [load("aws.yaml")["docker"]["image"]]
    for name in ("kuberay/raycluster.yaml", "kuberay/rayjob.yaml"):
        found += [container["image"] for pod in pod_templates(name) for container in pod["containers"]]
    return found


def test_image_tags_and_ray_versions_agree_with_the_project():
    assert set(images()) == {IMAGE}
    ray = locked("ray")
    assert load("kuberay/raycluster.yaml")["spec"]["rayVersion"] == ray
    assert load("kuberay/rayjob.yaml")["spec"]["rayClusterSpec"]["rayVersion"] == ray
    base = re.search(r"^ARG RAY_IMAGE=rayproject/ray:(\S+)-py(\d)(\d+)-gpu$", (CLUSTER / "Dockerfile").read_text(),
                     re.MULTILINE)
    assert base and base.group(1) == ray, "the base image's Ray is the locked Ray"
    assert f"{base.group(2)}.{base.group(3)}" in SpecifierSet(PROJECT["requires-python"])


def test_dockerfile_installs_the_lock_as_its_user():
    text = (CLUSTER / "Dockerfile").read_text()
    assert re.search(r'^ARG TORCH="torch==([^\s"]+)[^"]*"$', text, re.MULTILINE).group(1) == locked("torch")
    installs = [line for line in text.splitlines() if "pip install" in line]
    assert installs and all("-c constraints.txt" in line for line in installs)
    assert text.rindex("USER ray") > text.index("USER root") and text.index("USER ray") < text.index("pip install")
    assert 'mkdir -p "$REALFILL_CACHE" "$HF_HOME"' in text and "chown -R ray:users /mnt/cache" in text
    for line in text.splitlines():
        if line.startswith("COPY "):
            for source in [word for word in line.split()[1:-1] if not word.startswith("--")]:
                assert (REPO / source).exists(), source


def test_job_commands_in_the_cluster_files_are_valid_gpu_runs():
    commands = commented_commands("aws.yaml") + commented_commands("kuberay/raycluster.yaml")
    commands.append(shlex.split(load("kuberay/rayjob.yaml")["spec"]["entrypoint"]))
    assert len(commands) == 3
    for words in commands:
        assert_is_gpu_run(words)


DRIVER_NEEDED = {"cu126": 560, "cu128": 570, "cu129": 575, "cu130": 580}
"""The NVIDIA driver each CUDA build of torch needs (NVIDIA's CUDA release notes); PyPI's plain Linux wheel
of the locked torch is the CUDA 13.0 build."""


def image_cuda_build() -> str:
    torch = re.search(r'^ARG TORCH="([^"]+)"$', (CLUSTER / "Dockerfile").read_text(), re.MULTILINE).group(1)
    index = re.search(r"--index-url https://download.pytorch.org/whl/(cu\d+)$", torch)
    return index.group(1) if index else "cu130"


def test_the_gpu_ami_the_cuda_build_and_the_driver_agree():
    """The image's torch needs a driver; the launcher's AMI is a GPU AMI whose driver the files state, and
    every file that states a driver states the one the image's CUDA build needs."""
    needed = DRIVER_NEEDED[image_cuda_build()]
    launcher = load("aws.yaml")
    for name in ("gpu_worker", "gpu_worker_spot", "head"):
        image = launcher["available_node_types"][name]["node_config"]["ImageId"]
        assert image.startswith("resolve:ssm:/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-"), \
            f"{name}: a GPU AMI with the NVIDIA driver (Ray's default AMI has a driver too old for CUDA 12/13)"
    for name in ("aws.yaml", "kuberay/raycluster.yaml", "Dockerfile"):
        stated = {int(found) for found in re.findall(r"driver >= (\d+)", (CLUSTER / name).read_text())}
        assert needed in stated, f"{name} states the driver {image_cuda_build()} needs ({needed}): {stated}"
    header = (CLUSTER / "aws.yaml").read_text()
    assert re.search(rf"NVIDIA driver is {needed} or newer", header), "the AMI's driver is the one needed"


def test_stages_never_run_on_the_head_and_gpu_workers_can_be_spot():
    launcher = load("aws.yaml")
    assert launcher["available_node_types"]["head"]["resources"] == {"CPU": 0}
    for name in ("kuberay/raycluster.yaml", "kuberay/rayjob.yaml"):
        spec = load(name)["spec"]
        spec = spec.get("rayClusterSpec", spec)
        assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0", name
    spot = launcher["available_node_types"]["gpu_worker_spot"]
    on_demand = launcher["available_node_types"]["gpu_worker"]
    assert spot["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot"
    assert {**spot["node_config"], "InstanceMarketOptions": None} == {**on_demand["node_config"],
                                                                      "InstanceMarketOptions": None}


def test_a_private_image_is_pulled_after_a_registry_login():
    launcher = load("aws.yaml")
    registry = IMAGE.split("/")[0]
    assert any(f"docker login --username AWS --password-stdin {registry}" in command
               for command in launcher["initialization_commands"])
    policy = yaml.safe_load((CLUSTER / "aws-ecr-pull-policy.json").read_text())
    actions = {action for statement in policy["Statement"] for action in statement["Action"]}
    assert {"ecr:GetAuthorizationToken", "ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer"} <= actions
    header = (CLUSTER / "aws.yaml").read_text()
    for role in ("realfill-worker", "ray-autoscaler-v1"):
        assert re.search(rf"--role-name {role} --policy-name realfill-ecr", header), role


def test_kuberay_pods_share_one_model_cache_and_have_shm():
    """One ReadWriteMany claim for every pod (each new GPU pod would otherwise download the models again),
    and a memory-backed /dev/shm; the RayJob starts with no GPU pod, as its comment says, and no fixed pool."""
    claim = load("kuberay/model-cache.yaml")
    assert claim["kind"] == "PersistentVolumeClaim" and claim["spec"]["accessModes"] == ["ReadWriteMany"]
    for pod in pod_templates("kuberay/raycluster.yaml") + pod_templates("kuberay/rayjob.yaml"):
        volumes = {volume["name"]: volume for volume in pod["volumes"]}
        assert volumes["cache"]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
        assert volumes["dshm"]["emptyDir"]["medium"] == "Memory"
        assert {"name": "dshm", "mountPath": "/dev/shm"} in pod["containers"][0]["volumeMounts"]
    job = load("kuberay/rayjob.yaml")
    (group,) = job["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    assert group["replicas"] == group["minReplicas"] == 0
    assert "--samplers" not in job["spec"]["entrypoint"], "the sampler pool follows the GPUs"


def test_runtime_env_ships_code_only():
    runtime_env = load("runtime_env.yaml")
    assert runtime_env["working_dir"] == "." and ".venv" in runtime_env["excludes"]
    assert not {"pip", "uv", "conda"} & set(runtime_env), "packages come from the image, built from the lock"
