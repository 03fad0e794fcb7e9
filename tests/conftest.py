pytest_plugins = ["pyapptron.host.pytest_plugin"]
