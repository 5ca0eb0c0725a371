"""A counter session at a business hall, over billdb's HTTP/JSON API:
the customer hands over an IC card; the cashier checks it, looks at the
recent records, sells credit and prints the invoice.

    BILLDB_TOKEN=<counter token> python3 counter_session.py CARD GENERATION SEQ_ON_CARD AMOUNT

Prints the session as JSON (verdict, account, recent records, the sale, the
printed invoice).
"""

import json
import sys

from billdb_http import Billdb, BilldbError


def main():
    card_no, generation, seq_on_card, amount = sys.argv[1:5]
    db = Billdb()

    # 1. The card: is it the account's current card, and was the last sale loaded?
    verify = db.call(
        "POST",
        "/v1/cards/verify",
        {"card_no": card_no, "generation": int(generation), "seq_on_card": int(seq_on_card)},
    )
    account_id = verify["account"]["account_id"]

    # 2. The recent records (the counter's screen).
    recent = db.call(
        "GET", f"/v1/accounts/{account_id}/records", params={"segment": "recent", "limit": 10}
    )

    # 3. The sale. The request_id is chosen once; every retry resends it, so
    #    a lost answer never sells twice.
    request_id = db.new_request_id()
    try:
        sale = db.call(
            "POST",
            "/v1/purchases",
            {"request_id": request_id, "card_no": card_no, "amount": amount},
        )
    except BilldbError as e:
        if e.code != "POSSIBLE_DUPLICATE":
            raise
        # Same card and amount within 30 s: the cashier asks the customer,
        # then confirms with a NEW request (it is a second sale).
        sale = db.call(
            "POST",
            "/v1/purchases",
            {"request_id": db.new_request_id(), "card_no": card_no, "amount": amount,
             "confirm_duplicate": True},
        )

    # 4. The invoice (a reprint is marked as such by the server).
    invoice_no = sale["record"]["invoice_no"]
    printed = db.call(
        "POST", f"/v1/invoices/{invoice_no}/print", {"request_id": db.new_request_id()}
    )

    json.dump(
        {"verify": verify, "recent": recent, "sale": sale, "invoice": printed},
        sys.stdout,
    )


if __name__ == "__main__":
    main()
