//! `autofunnel import` and `autofunnel export` as a seller moving from another service runs
//! them, on both backends: columns matched by header (aliases, `--map`, a `;` file), repeated
//! and known addresses merged, unsubscribed and suppressed ones kept so, refused rows in the
//! rejects file with their reason, the consent's proof on record, enrollment, a dry run that
//! stores nothing, and an export that imports back to the same leads.

use std::path::Path;
use std::process::{Command, Output};

use autofunnel::domain::{Consent, Email};
use autofunnel::store::Store;

const FUNNEL: &str = "name: Course\nfrom: \"Shop <shop@example.com>\"\nentry: { api: true }\n\
    fields:\n  age: { type: number }\n  plan: { type: text }\n\
    stages:\n  - id: warm\n    steps:\n      - wait: 30d\n      - exit: completed\n";

fn autofunnel(project: &Path, db: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_autofunnel"))
        .arg("-C")
        .arg(project)
        .args(args)
        .env("AUTOFUNNEL_DATABASE_URL", db)
        .env_remove("AUTOFUNNEL_LISTEN")
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    assert!(
        o.status.success(),
        "exit {:?}: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

async fn moving_in_and_out(db: String) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    std::fs::create_dir_all(p.join("funnels")).unwrap();
    std::fs::write(p.join("funnels/course.yaml"), FUNNEL).unwrap();

    // Already here before the import: a pending lead with a field, and a suppressed address.
    let store = Store::connect(&db).await.unwrap();
    store.migrate().await.unwrap();
    let t0 = chrono::Utc::now();
    let known = Email::parse("known@example.com").unwrap();
    let mut input = autofunnel::store::LeadInput::default();
    input.fields.insert("plan".into(), "gold".into());
    store.upsert_lead(&known, input, t0).await.unwrap();
    let gone = Email::parse("gone@example.com").unwrap();
    store
        .suppress_email(&gone, "unsubscribed", t0)
        .await
        .unwrap();

    let csv = "Email Address;First Name;City;Years;Tags;Notes;Status\n\
        ann@example.com;Ann;Kazan;31;VIP Clients;n1;subscribed\n\
        not-an-address;Bob;;;;n2;\n\
        ann@example.com;Anna;;;b2b;n3;\n\
        known@example.com;Kim;Perm;;;;\n\
        dan@example.com;Dan;;old;;;\n\
        cleo@example.com;Cleo;;;;;unsubscribed\n\
        gone@example.com;Gone;;;;;\n\
        eve@example.com;Eve\n";
    let file = p.join("from-getcourse.csv");
    std::fs::write(&file, csv).unwrap();
    let file_arg = file.to_str().unwrap();
    let args = [
        "import",
        file_arg,
        "--map",
        "Years=age",
        "--tag",
        "imported",
        "--funnel",
        "course",
        "--confirmed",
        "--consent-source",
        "GetCourse export, 2026-12",
    ];

    // A dry run says what would happen and stores nothing.
    let mut dry = args.to_vec();
    dry.push("--dry-run");
    let out = stdout(&autofunnel(p, &db, &dry));
    assert!(
        out.starts_with(&format!(
            "would import {file_arg}: 8 rows; 3 new leads, 1 merged into leads already stored, \
         1 repeated rows merged, 3 refused"
        )),
        "{out}"
    );
    let leads = |s: &Store| {
        let s = s.clone();
        async move {
            s.lead_page(autofunnel::domain::LeadId(0), 100)
                .await
                .unwrap()
        }
    };
    assert_eq!(leads(&store).await.len(), 1, "the dry run stored nothing");
    assert!(!p.join("from-getcourse.rejects.csv").exists());

    let out = stdout(&autofunnel(p, &db, &args));
    let expected = format!(
        "imported {file_arg}: 8 rows; 3 new leads, 1 merged into leads already stored, 1 repeated rows merged, 3 refused\n\
         \x20 refused 1: column \"Email Address\"\n\
         \x20 refused 1: column \"Years\"\n\
         \x20 refused 1: has 2 columns, the header 7\n\
         \x20 the refused rows, with the reason, are in {}\n\
         columns left out: Notes (map one with --map \"COLUMN=FIELD\")\n\
         2 addresses are unsubscribed or suppressed: kept so, never mailed or enrolled\n\
         enrolled 2 into course (0 already in it or not allowed back by its re_entry)\n",
        p.join("from-getcourse.rejects.csv").display()
    );
    assert_eq!(out, expected);
    let rejects = std::fs::read_to_string(p.join("from-getcourse.rejects.csv")).unwrap();
    let lines: Vec<&str> = rejects.lines().collect();
    assert_eq!(
        lines[0],
        "line,reason,Email Address,First Name,City,Years,Tags,Notes,Status"
    );
    assert!(
        lines[1].starts_with("3,\"column \"\"Email Address\"\": "),
        "{rejects}"
    );
    assert!(
        lines[1].ends_with(",not-an-address,Bob,,,,n2,"),
        "{rejects}"
    );
    assert_eq!(
        lines[2],
        "6,\"column \"\"Years\"\": expected a number, found \"\"old\"\"\",dan@example.com,Dan,,old,,,"
    );
    assert_eq!(
        lines[3],
        "9,\"has 2 columns, the header 7\",eve@example.com,Eve"
    );

    let by_email = |e: &str| {
        let s = store.clone();
        let e = Email::parse(e).unwrap();
        async move { s.lead_by_email(&e).await.unwrap().unwrap() }
    };
    // The repeated address: the later name, both rows' tags, the first row's fields.
    let ann = by_email("ann@example.com").await;
    assert_eq!(ann.first_name.as_deref(), Some("Anna"));
    assert_eq!(ann.fields["city"], "Kazan");
    assert_eq!(ann.fields["age"], 31.0);
    assert_eq!(ann.consent, Consent::Confirmed);
    let tags: Vec<String> = store
        .lead_tags(ann.id)
        .await
        .unwrap()
        .iter()
        .map(|t| t.to_string())
        .collect();
    assert_eq!(tags, ["b2b", "imported", "vip-clients"]);
    // The known lead: merged (its own field kept), its pending consent raised, with proof.
    let kim = by_email("known@example.com").await;
    assert_eq!(kim.first_name.as_deref(), Some("Kim"));
    assert_eq!(kim.fields["plan"], "gold");
    assert_eq!(kim.fields["city"], "Perm");
    assert_eq!(kim.consent, Consent::Confirmed);
    let record = store.export_lead(kim.id).await.unwrap().unwrap();
    assert_eq!(record["consents"][0]["status"], "confirmed");
    assert_eq!(record["consents"][0]["source"], "GetCourse export, 2026-12");
    // Unsubscribed elsewhere: suppressed here; suppressed here: still so; neither enrolled.
    let cleo = by_email("cleo@example.com").await;
    assert_eq!(cleo.consent, Consent::Unsubscribed);
    let cleo_email = Email::parse("cleo@example.com").unwrap();
    assert_eq!(
        store
            .suppressed_among(&[cleo_email.as_str(), gone.as_str()])
            .await
            .unwrap()
            .len(),
        2
    );
    for l in [&cleo, &by_email("gone@example.com").await] {
        assert!(
            store
                .enrollments_of(l.id, &crate::util::fid("course"))
                .await
                .unwrap()
                .is_empty(),
            "{}",
            l.email.as_str()
        );
    }
    assert_eq!(
        store
            .enrollments_of(ann.id, &crate::util::fid("course"))
            .await
            .unwrap()
            .len(),
        1
    );
    store.close().await.unwrap();

    // Out again, and back into an empty project: the same leads.
    let exported = p.join("leads.csv");
    let out = stdout(&autofunnel(p, &db, &["export", exported.to_str().unwrap()]));
    assert_eq!(out, format!("exported 4 leads to {}\n", exported.display()));
    let text = std::fs::read_to_string(&exported).unwrap();
    let mut rows = text.lines();
    assert_eq!(
        rows.next().unwrap(),
        "email,first_name,timezone,consent,score,created_at,tags,age,city,plan"
    );
    let ann_row = rows.find(|r| r.starts_with("ann@")).unwrap();
    assert!(
        ann_row.starts_with("ann@example.com,Anna,,confirmed,0,"),
        "{ann_row}"
    );
    assert!(
        ann_row.ends_with(",\"b2b,imported,vip-clients\",31.0,Kazan,"),
        "{ann_row}"
    );

    let again = tempfile::tempdir().unwrap();
    let second_db = format!("sqlite://{}/again.db?mode=rwc", again.path().display());
    std::fs::create_dir_all(again.path().join("funnels")).unwrap();
    std::fs::write(again.path().join("funnels/course.yaml"), FUNNEL).unwrap();
    let out = stdout(&autofunnel(
        again.path(),
        &second_db,
        &[
            "import",
            exported.to_str().unwrap(),
            "--map",
            "plan=",
            "--map",
            "score=",
            "--map",
            "created_at=",
        ],
    ));
    assert!(out.contains("4 new leads, 0 merged"), "{out}");
    let back = stdout(&autofunnel(again.path(), &second_db, &["export", "-"]));
    // What moves with a lead: its address, name, tags and fields (the time it was stored
    // is the import's; plan was left out).
    let strip = |t: &str| -> Vec<Vec<String>> {
        let mut r = csv::Reader::from_reader(t.as_bytes());
        let mut rows: Vec<Vec<String>> = r
            .records()
            .map(|rec| {
                let rec = rec.unwrap();
                [0, 1, 6, 7, 8]
                    .iter()
                    .map(|i| rec[*i].to_string())
                    .collect()
            })
            .collect();
        rows.sort();
        rows
    };
    assert_eq!(strip(&back), strip(&text));
}

#[tokio::test]
async fn moving_in_and_out_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    moving_in_and_out(format!(
        "sqlite://{}/leads.db?mode=rwc",
        dir.path().display()
    ))
    .await;
}

#[tokio::test]
async fn moving_in_and_out_on_postgres() {
    crate::store::on_postgres_url("moving_in_and_out", moving_in_and_out).await;
}

#[test]
fn a_file_that_cannot_be_mapped_is_exit_2_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    std::fs::create_dir_all(p.join("funnels")).unwrap();
    std::fs::write(p.join("funnels/course.yaml"), FUNNEL).unwrap();
    std::fs::write(p.join("a.csv"), "name,phone\nAnn,1\n").unwrap();
    let db = format!("sqlite://{}/a.db?mode=rwc", p.display());
    let out = autofunnel(p, &db, &["import", p.join("a.csv").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("error: no email column (the columns: name, phone)"),
        "{err}"
    );
    let out = autofunnel(
        p,
        &db,
        &[
            "import",
            p.join("a.csv").to_str().unwrap(),
            "--map",
            "phone=email",
            "--funnel",
            "nope",
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("--funnel nope: no such funnel (the funnels are: course)")
    );
    std::fs::write(p.join("empty.csv"), "").unwrap();
    let out = autofunnel(p, &db, &["import", p.join("empty.csv").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("has no header row"));
}

/// `autofunnel status` says where the runs wait and what the outbox holds; with no database
/// yet it says so and makes none.
#[test]
fn status_says_where_the_runs_wait() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    std::fs::create_dir_all(p.join("funnels")).unwrap();
    std::fs::write(p.join("funnels/course.yaml"), FUNNEL).unwrap();
    let db = format!("sqlite://{}/s.db?mode=rwc", p.display());
    let out = autofunnel(p, &db, &["status"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("no database yet"));
    assert!(!p.join("s.db").exists());
    std::fs::write(
        p.join("two.csv"),
        "email\nann@example.com\nbob@example.com\n",
    )
    .unwrap();
    let csv = p.join("two.csv");
    stdout(&autofunnel(
        p,
        &db,
        &["import", csv.to_str().unwrap(), "--funnel", "course"],
    ));
    let out = stdout(&autofunnel(p, &db, &["status"]));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "course", "{out}");
    assert!(
        lines[1].starts_with("  stage warm, step wait-1: 2 run(s), next wake-up "),
        "{out}"
    );
    assert_eq!(
        lines[2],
        "outbox: 0 queued, 0 sending, 0 sent, 0 failed, 0 suppressed"
    );
}
