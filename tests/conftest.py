pytest_plugins = ["pytester"]  # tests/test_pytest_plugin.py runs real pytest sessions
