"""unittest.main for the command-line contract tests, with one rule added: a skipped test is a
failure. ctest would report such a run as passed, and a contract that was never checked must not
look like one that holds. A test that cannot apply to a configuration is left out of the suite
by its module instead (a load_tests function), with the reason in a comment there."""
import sys
import unittest


def main(argv):
    program = unittest.main(argv=argv, verbosity=2, exit=False)
    result = program.result
    for test, reason in result.skipped:
        print("FAIL: %s was skipped (%s); skips are failures here" % (test.id(), reason))
    sys.exit(0 if result.wasSuccessful() and not result.skipped else 1)
