pytest_plugins = ["tests.fixtures.servers", "tests.fixtures.sidecar", "tests.fixtures.replicas"]
