"""Ray orchestration of the realfill stages: tasks, actors, the driver. No model math lives here."""
