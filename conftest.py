"""squeezebench's pytest wiring: the plugin (options, parametrization, machine info) and fixtures."""
pytest_plugins = ["squeezebench.pytest_plugin", "fixtures.bench"]
