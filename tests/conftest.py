# The admin fixtures come last: they import the sidecar fixtures' module.
pytest_plugins = [
    "tests.fixtures.servers",
    "tests.fixtures.redis_cluster",
    "tests.fixtures.redis_tls",
    "tests.fixtures.redis_sentinel",
    "tests.fixtures.sidecar",
    "tests.fixtures.replicas",
    "tests.fixtures.upstreams",
    "tests.fixtures.admin",
]
