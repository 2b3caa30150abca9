//! A new user's first payment, as the README walks it, with the real binary: `switch serve` on its
//! embedded defaults (ports chosen by the OS, read from what it prints), certificates from
//! `switch certs issue`, then `switch client` registering, funding, adding aliases, paying and
//! reading the status; a third PSP is refused the status; a production-style connection with
//! explicit PEM files and a server name; and after the switch is killed (SIGKILL) and started
//! again, the payment and the positions are still there and the ledger still sums to zero.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::served::Served;

const SWITCH: &str = env!("CARGO_BIN_EXE_switch");

fn run(args: &[&str]) -> Output {
    Command::new(SWITCH).args(args).output().expect("run switch")
}

/// `switch client --server ... --data ... <args>`, which must succeed; its stdout.
fn client(served: &Served, data: &Path, args: &[&str]) -> String {
    let output = client_output(served, data, args);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "switch client {args:?} failed: {}{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

fn client_output(served: &Served, data: &Path, args: &[&str]) -> Output {
    let server = format!("https://{}", served.grpc);
    let data = data.to_str().expect("utf-8 path");
    let mut all = vec!["client", "--server", &server, "--data", data];
    all.extend_from_slice(args);
    run(&all)
}

/// The value after `name: ` on one of a client's `field: value` lines.
fn field<'a>(text: &'a str, name: &str) -> &'a str {
    let prefix = format!("{name}: ");
    text.lines().find_map(|line| line.trim().strip_prefix(&prefix)).unwrap_or_else(|| panic!("no {name} in {text}"))
}

fn number(text: &str, name: &str) -> i64 {
    field(text, name).parse().unwrap_or_else(|_| panic!("{name} is not a number in {text}"))
}

fn assert_ledger_balanced(served: &Served) {
    let address = served.operator;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let (code, metrics) = runtime.block_on(common::http_get(address, "/metrics"));
    assert_eq!(code, 200);
    assert_eq!(common::series(&metrics, "switch_ledger_balanced"), Some(1.0), "debits equal credits");
}

#[test]
fn a_new_user_makes_one_payment_by_following_the_readme() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let data_arg = data.to_str().expect("utf-8 path");
    let served = Served::start(&data);
    for psp in ["bank-a", "bank-b", "bank-c"] {
        let issued = run(&["certs", "issue", "--data", data_arg, "--psp", psp]);
        assert!(issued.status.success(), "certs issue --psp {psp}");
    }
    let a = client(
        &served,
        &data,
        &["--as", "admin", "register-participant", "--psp", "bank-a", "--name", "Bank A", "--cap", "50000"],
    );
    assert!(a.contains("bank-a"), "{a}");
    client(&served, &data, &["--as", "admin", "register-participant", "--psp", "bank-b", "--name", "Bank B"]);
    client(&served, &data, &["--as", "admin", "register-participant", "--psp", "bank-c", "--name", "Bank C"]);
    client(&served, &data, &["--as", "admin", "fund-in", "--psp", "bank-a", "--amount", "100000"]);
    client(&served, &data, &["--as", "bank-a", "alias", "--alias", "ana@bank-a", "--name", "Ana"]);
    client(&served, &data, &["--as", "bank-b", "alias", "--alias", "bo@bank-b", "--name", "Bo"]);
    let paid = client(
        &served,
        &data,
        &[
            "--as",
            "bank-a",
            "pay",
            "--from",
            "ana@bank-a",
            "--to",
            "bo@bank-b",
            "--amount",
            "2500",
            "--note",
            "rent",
            "--id",
            "42",
        ],
    );
    assert_eq!(paid.trim(), "payment 42: PAYMENT_STATE_COMPLETED");
    let status = client(&served, &data, &["--as", "bank-b", "status", "--id", "42"]);
    assert_eq!(field(&status, "state"), "PAYMENT_STATE_COMPLETED");
    assert_eq!(field(&status, "payment_id"), "42", "the id reads back as it was given");
    assert_eq!((field(&status, "payer_alias"), field(&status, "payee_alias")), ("ana@bank-a", "bo@bank-b"));
    assert_eq!(number(&status, "amount_minor"), 2500);

    // A third PSP cannot see it: the same answer as for an id that does not exist.
    let refused = client_output(&served, &data, &["--as", "bank-c", "status", "--id", "42"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("PAYMENT_NOT_FOUND"), "{refused:?}");

    // Production style: the CA, certificate and key as files, and the server's DNS name.
    let certs = data.join("certs");
    let pem = |name: &str| certs.join(name).to_str().expect("utf-8 path").to_string();
    let (ca, cert, key) = (pem("ca.pem"), pem("psp-bank-b.pem"), pem("psp-bank-b.key"));
    let files = ["--ca", &ca, "--cert", &cert, "--key", &key];
    let position = client(&served, &data, &[&files[..], &["--domain", "localhost", "position"]].concat());
    assert_eq!(number(&position, "balance_minor"), 2500);
    // A name the server's certificate does not carry is refused at the handshake.
    let wrong = client_output(&served, &data, &[&files[..], &["--domain", "switch.example.org", "position"]].concat());
    assert!(!wrong.status.success(), "a server certificate without the asked name must be refused");
    assert_ledger_balanced(&served);

    // An audit of the live ledger is refused, naming the switch's process: the switch is still
    // writing the files a read-only open would read.
    let ledger_dir = data.join("ledger");
    match ledger::Store::open_read_only(&ledger_dir, &ledger::StoreOptions::default()) {
        Err(ledger::StoreError::InUse { pid, .. }) => assert_eq!(pid, served.child.id()),
        other => panic!("the live ledger was opened for an audit: {:?}", other.err()),
    }

    // Killed without warning and started again: the acknowledged payment and positions remain.
    drop(served);
    let stopped = ledger::Store::open_read_only(&ledger_dir, &ledger::StoreOptions::default());
    drop(stopped.expect("a stopped ledger opens for an audit"));
    let served = Served::start(&data);
    let status = client(&served, &data, &["--as", "bank-a", "status", "--id", "42"]);
    assert_eq!((field(&status, "state"), number(&status, "amount_minor")), ("PAYMENT_STATE_COMPLETED", 2500));
    let payer = client(&served, &data, &["--as", "bank-a", "position"]);
    let payee = client(&served, &data, &["--as", "bank-b", "position"]);
    assert_eq!((number(&payer, "balance_minor"), number(&payee, "balance_minor")), (97_500, 2_500));
    assert_ledger_balanced(&served);
}
