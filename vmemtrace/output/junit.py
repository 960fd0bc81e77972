"""JUnit XML of a verify document: one testcase per device and check, for CI dashboards."""

import xml.etree.ElementTree as ET


def junit_xml(doc: dict) -> bytes:
    suite = ET.Element("testsuite", name=f"vmemtrace {doc['kernel']}")
    tests = failures = skipped = errors = 0
    for d in doc["devices"]:
        for c in d["checks"]:
            tests += 1
            case = ET.SubElement(suite, "testcase", classname=f"vmemtrace.{d['device']}", name=c["name"])
            if c["status"] == "fail":
                failures += 1
                ET.SubElement(case, "failure", message=c["detail"])
            elif c["status"] == "error":  # the evidence for it is broken
                errors += 1
                ET.SubElement(case, "error", message=c["detail"])
            elif c["name"] in d.get("unjudged", ()):  # defines the case, not seen, not waived
                errors += 1
                ET.SubElement(case, "error", message=f"not judged: {c['detail']}")
            elif c["status"] == "skip":
                skipped += 1
                ET.SubElement(case, "skipped", message=c["detail"])
    for p in doc.get("problems", []):
        tests += 1
        errors += 1
        case = ET.SubElement(suite, "testcase", classname="vmemtrace", name="trace")
        ET.SubElement(case, "error", message=p)
    suite.set("tests", str(tests))
    suite.set("failures", str(failures))
    suite.set("skipped", str(skipped))
    suite.set("errors", str(errors))
    return ET.tostring(suite, encoding="utf-8", xml_declaration=True)
