"""A gRPC client that has no .proto file: it learns billdb's API from the
node's server reflection, then calls it (node/tests/grpc_discovery.rs runs it).

Prints one JSON document on stdout:
  services      every service the reflection service lists
  verdict       the card check's verdict on --card before the sale (an enum
                value name, from the typed billdb.v2 reply)
  purchase      the typed answer of a purchase on --card (billdb.v2), as a
                dict with the proto's field names
  refusal       {grpc_code, reason, domain, details} of a purchase on an
                unknown card, read from the google.rpc.Status ErrorInfo detail
  session       the rest of the counter session: the account's recent
                records (ListRecords, newest first) and the invoice printed
                (PrintInvoice of the sale's invoice_no)
  bank          a bank posting sent twice with one request_id (--bank-token,
                --account): both answers, which must name one record
  health        the grpc.health.v1 status of "", billdb.v2.Billing and
                billdb.v1.Billing
"""

import argparse
import json
import sys
import uuid

import grpc
from google.protobuf import descriptor_pool, json_format, message_factory
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from grpc_status import rpc_status


def message_class(pool, full_name):
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(full_name))


def unary(channel, pool, service, method):
    """A callable for service/method whose types come from reflection."""
    m = pool.FindServiceByName(service).FindMethodByName(method)
    req = message_factory.GetMessageClass(m.input_type)
    resp = message_factory.GetMessageClass(m.output_type)
    call = channel.unary_unary(
        f"/{service}/{method}",
        request_serializer=req.SerializeToString,
        response_deserializer=resp.FromString,
    )
    return req, call


def to_dict(msg):
    return json_format.MessageToDict(msg, preserving_proto_field_name=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", required=True, help="host:port of a node's gRPC port")
    ap.add_argument("--ca", required=True, help="the cluster CA bundle (PEM)")
    ap.add_argument("--server-name", help="the name to check the certificate for, when not the target's host")
    ap.add_argument("--token", required=True)
    ap.add_argument("--card", required=True)
    ap.add_argument("--amount", default="10.00")
    ap.add_argument("--account", required=True, help="the card's account")
    ap.add_argument("--bank-token", required=True, help="a bank role token for --bank-code")
    ap.add_argument("--bank-code", default="ICBC")
    args = ap.parse_args()

    with open(args.ca, "rb") as f:
        creds = grpc.ssl_channel_credentials(root_certificates=f.read())
    options = []
    if args.server_name:
        options.append(("grpc.ssl_target_name_override", args.server_name))
    channel = grpc.secure_channel(args.target, creds, options=options)
    grpc.channel_ready_future(channel).result(timeout=10)

    db = ProtoReflectionDescriptorDatabase(channel)
    services = sorted(db.get_services())
    pool = descriptor_pool.DescriptorPool(db)
    auth = [("authorization", f"Bearer {args.token}")]

    verify_cls, verify = unary(channel, pool, "billdb.v2.Billing", "VerifyCard")
    check = verify(verify_cls(card_no=args.card, generation=1), metadata=auth, timeout=10)
    verdict = check.DESCRIPTOR.fields_by_name["verdict"].enum_type.values_by_number[check.verdict].name

    req_cls, purchase = unary(channel, pool, "billdb.v2.Billing", "Purchase")
    answer = purchase(
        req_cls(request_id=str(uuid.uuid4()), card_no=args.card, amount=args.amount),
        metadata=auth,
        timeout=10,
    )
    out = {"services": services, "verdict": verdict, "purchase": to_dict(answer)}

    list_cls, list_records = unary(channel, pool, "billdb.v2.Billing", "ListRecords")
    recent = list_records(
        list_cls(account_id=args.account, segment="recent", limit=5, order="desc"),
        metadata=auth,
        timeout=10,
    )
    print_cls, print_invoice = unary(channel, pool, "billdb.v2.Billing", "PrintInvoice")
    printed = print_invoice(
        print_cls(request_id=str(uuid.uuid4()), invoice_no=answer.record.invoice_no),
        metadata=auth,
        timeout=10,
    )
    out["session"] = {"recent": to_dict(recent), "printed": to_dict(printed)}

    bank_auth = [("authorization", f"Bearer {args.bank_token}")]
    pay_cls, post_payment = unary(channel, pool, "billdb.v2.Billing", "PostPayment")
    payment = pay_cls(
        request_id=f"reflect-pay-{uuid.uuid4()}",
        account_id=args.account,
        amount="50.00",
        bank_code=args.bank_code,
        bank_ref=f"REFLECT-{uuid.uuid4().hex[:12]}",
    )
    # The same request again, as after a lost answer: one payment.
    first = post_payment(payment, metadata=bank_auth, timeout=10)
    again = post_payment(payment, metadata=bank_auth, timeout=10)
    out["bank"] = {"first": to_dict(first), "again": to_dict(again)}

    try:
        purchase(
            req_cls(request_id=str(uuid.uuid4()), card_no="NO-SUCH-CARD-0", amount="1.00"),
            metadata=auth,
            timeout=10,
        )
        out["refusal"] = None
    except grpc.RpcError as err:
        status = rpc_status.from_call(err)
        refusal = {"grpc_code": err.code().name, "message": err.details()}
        for detail in status.details if status else []:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                refusal.update(
                    reason=info.reason, domain=info.domain, metadata=dict(info.metadata)
                )
        out["refusal"] = refusal

    health = health_pb2_grpc.HealthStub(channel)
    out["health"] = {
        name or "(server)": health_pb2.HealthCheckResponse.ServingStatus.Name(
            health.Check(health_pb2.HealthCheckRequest(service=name), timeout=10).status
        )
        for name in ["", "billdb.v2.Billing", "billdb.v1.Billing"]
    }
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
