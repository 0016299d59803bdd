# Added by assignments/make.py to the student copy: a test that reaches an exercise not
# written yet (its body still raises NotImplementedError) is reported as skipped, with the
# function's name, instead of failing; the rest of the suite still says what is broken.


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if call.excinfo is not None and call.excinfo.errisinstance(NotImplementedError):
        report.outcome = "skipped"
        report.longrepr = (str(item.path), item.location[1] or 0,
                           f"Skipped: not implemented yet: {call.excinfo.value}")
