"""Checks every example in an OpenAPI 3.1 document against the schema it
illustrates (request bodies and answers), with the document's own
components, by jsonschema_rs (which schemathesis brings) (node/tests/api_contract.rs runs it on api/openapi.json).

Prints {"checked": N, "failures": [...]} and exits 1 on any failure.
"""

import json
import sys
from urllib.parse import quote

import jsonschema_rs


def pointer(*parts):
    """A URI fragment holding the JSON pointer to parts (percent-encoded:
    paths hold braces)."""
    escaped = (str(p).replace("~", "~0").replace("/", "~1") for p in parts)
    return "#/" + "/".join(quote(p, safe="~") for p in escaped)


def main():
    with open(sys.argv[1]) as f:
        doc = json.load(f)
    checked, failures = 0, []
    for path, item in doc.get("paths", {}).items():
        for method, op in item.items():
            if not isinstance(op, dict):
                continue
            places = []
            body = op.get("requestBody", {}).get("content", {}).get("application/json")
            if body and "example" in body:
                places.append(((path, method, "requestBody", "content", "application/json", "schema"), body["example"]))
            for status, resp in op.get("responses", {}).items():
                content = resp.get("content", {}).get("application/json")
                if content and "example" in content:
                    places.append(((path, method, "responses", status, "content", "application/json", "schema"), content["example"]))
            for where, example in places:
                # The whole document as the root schema, pointing at the
                # place: the schema's own "#/components/..." references
                # resolve against it (its other members are not keywords).
                root = dict(doc)
                root["$ref"] = pointer("paths", *where)
                validator = jsonschema_rs.Draft202012Validator(root)
                errors = [e.message for e in validator.iter_errors(example)]
                checked += 1
                if errors:
                    failures.append({"where": f"{method.upper()} {path} {where[2]}", "errors": errors[:5]})
    json.dump({"checked": checked, "failures": failures}, sys.stdout)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
