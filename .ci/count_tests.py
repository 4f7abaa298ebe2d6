"""Prints `N passed, N failed, N skipped` over test cases, not Bazel targets.

Reads the build-event JSON file of a `bazel test` run, finds every test
attempt's test.xml (one per shard) and counts its test cases. A test attempt
without a test.xml (a crash, a timeout) counts as one failed case.

Usage: count_tests.py BEP_JSON_FILE
Exit status: 0, or 1 when no test case ran at all.
"""

import json
import os
import sys
import urllib.parse
import xml.etree.ElementTree as ET


def _xml_path(test_result):
    for output in test_result.get("testActionOutput", []):
        if output.get("name") == "test.xml":
            uri = output.get("uri", "")
            if uri.startswith("file://"):
                return urllib.parse.unquote(uri[len("file://") :])
    return None


def _count_xml(path):
    passed = failed = skipped = 0
    for case in ET.parse(path).getroot().iter("testcase"):
        children = {child.tag for child in case}
        if "failure" in children or "error" in children:
            failed += 1
        elif (
            "skipped" in children
            or case.get("result") in ("suppressed", "skipped")
            or case.get("status") == "notrun"
        ):
            skipped += 1
        else:
            passed += 1
    return passed, failed, skipped


def main(argv):
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    passed = failed = skipped = 0
    broken = []
    with open(argv[1]) as f:
        for line in f:
            event = json.loads(line)
            result = event.get("testResult")
            if result is None:
                continue
            label = event["id"]["testResult"]["label"]
            path = _xml_path(result)
            if path and os.path.exists(path):
                p, fl, s = _count_xml(path)
                if p + fl + s == 0 and result.get("status") != "PASSED":
                    fl = 1
                passed, failed, skipped = passed + p, failed + fl, skipped + s
            else:
                failed += 1
                broken.append(f"{label}: {result.get('status')}, no test.xml")
    for line in broken:
        print(f"count_tests: {line}")
    print(f"{passed} passed, {failed} failed, {skipped} skipped")
    return 0 if passed + failed else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
