//! Invoices: one number per purchase or payment, assigned once when the
//! record is posted (`INV` ‖ 12 digits from one cluster-wide counter, so
//! numbers are unique and gapless: a refused command writes nothing and
//! takes no number; imported legacy numbers are kept as is).
//! Printing is a write because the print count changes: the first print is
//! the original, every later one a reprint with the same number and its
//! count. May touch the `invoices` family only.
//!
//! Imports the ground floor and `accounts` (a print checks the account);
//! `ledger` (above) issues the invoice of each record it posts.

use billdb_api::error::ErrorCode;

use super::accounts;
use super::context::{Ctx, Res, read, refuse, write};
use super::keys;
use super::model::{Invoice, Record};
use super::ops::{Op, Outcome};
use super::txn::{Family, Get, Txn};

pub fn get_invoice<G: Get + ?Sized>(
    view: &G,
    invoice_no: &str,
) -> Result<Option<Invoice>, std::io::Error> {
    read(view, Family::Invoices, &keys::invoice(invoice_no))
}

/// Take the next invoice number.
pub(crate) fn next_number<T: Txn + ?Sized>(txn: &mut T) -> Res<String> {
    let last: u64 = read(&*txn, Family::Meta, keys::META_INVOICE_SEQ)?.unwrap_or(0);
    let n = last + 1;
    write(txn, Family::Meta, keys::META_INVOICE_SEQ.to_vec(), &n)?;
    Ok(format!("INV{n:012}"))
}

/// Whether `invoice_no` has the form of the numbers [`next_number`]
/// assigns (`INV` ‖ 12 digits). Imports refuse legacy numbers of this form,
/// so such a number was assigned by the counter, once: it needs no lookup
/// to be known new.
pub fn is_assigned_form(invoice_no: &str) -> bool {
    let b = invoice_no.as_bytes();
    b.len() == 15 && b.starts_with(b"INV") && b[3..].iter().all(u8::is_ascii_digit)
}

/// Record the invoice of a newly posted record (its number must be new).
/// A legacy number is looked up first; a number the counter assigned is
/// new by construction (see [`is_assigned_form`]), which saves a negative
/// point read per purchase, payment and imported record.
pub(crate) fn issue<T: Txn + ?Sized>(txn: &mut T, r: &Record) -> Res<()> {
    if !is_assigned_form(&r.invoice_no) && get_invoice(txn, &r.invoice_no)?.is_some() {
        return refuse(
            ErrorCode::InvalidArgument,
            format!("invoice number {:?} is already assigned", r.invoice_no),
        );
    }
    let inv = Invoice {
        invoice_no: r.invoice_no.clone(),
        account_id: r.account_id.clone(),
        seq: r.seq,
        kind: r.kind.clone(),
        amount: r.amount,
        units: r.units,
        issued_ms: r.ts_ms,
        print_count: 0,
        first_printed_ms: None,
        last_printed_ms: None,
    };
    write(txn, Family::Invoices, keys::invoice(&r.invoice_no), &inv)?;
    Ok(())
}

pub(crate) fn print<T: Txn>(txn: &mut T, ctx: &Ctx<'_>) -> Res<Outcome> {
    let Op::PrintInvoice { invoice_no } = &ctx.cmd.op else {
        return Err(std::io::Error::other("print called with another op").into());
    };
    let Some(mut inv) = get_invoice(txn, invoice_no)? else {
        return refuse(
            ErrorCode::InvoiceNotFound,
            format!("no invoice {invoice_no:?}"),
        );
    };
    let account = accounts::load(txn, &inv.account_id)?;
    account.check_writable(true)?;
    let reprint = inv.print_count > 0;
    inv.print_count = inv.print_count.saturating_add(1);
    if inv.first_printed_ms.is_none() {
        inv.first_printed_ms = Some(ctx.ts());
    }
    inv.last_printed_ms = Some(ctx.ts());
    write(txn, Family::Invoices, keys::invoice(invoice_no), &inv)?;
    Ok(Outcome::InvoicePrinted {
        invoice: Box::new(inv),
        reprint,
    })
}
