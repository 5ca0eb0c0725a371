"""A bank front-end posting a customer's payment, over billdb's HTTP/JSON API,
and posting it again as it would after a lost answer (a timeout, a broken
connection): the same request_id and body give the same outcome, one
payment.

    BILLDB_TOKEN=<bank token> python3 bank_posting.py ACCOUNT AMOUNT BANK_CODE BANK_REF

Prints {first, retry, stored} as JSON: both answers and the stored outcome.
"""

import json
import sys

from billdb_http import Billdb


def main():
    account_id, amount, bank_code, bank_ref = sys.argv[1:5]
    db = Billdb()
    # One request_id per payment, kept with the bank's own reference until
    # the answer arrives (a restart of the front-end resends it too).
    request_id = db.new_request_id()
    body = {
        "request_id": request_id,
        "account_id": account_id,
        "amount": amount,
        "bank_code": bank_code,
        "bank_ref": bank_ref,
    }
    first = db.call("POST", "/v1/payments", body)
    # The answer was "lost": resend the same request, unchanged.
    retry = db.call("POST", "/v1/payments", body)
    # Or ask what became of it.
    stored = db.call("GET", f"/v1/requests/{request_id}")
    json.dump({"first": first, "retry": retry, "stored": stored}, sys.stdout)


if __name__ == "__main__":
    main()
