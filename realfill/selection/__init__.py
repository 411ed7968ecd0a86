"""Selection: feature matchers, correspondence ranking, and the fakes that test it."""
