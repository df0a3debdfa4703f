//! The dashboard through the real server and a real HTTP client: signing in and out, the
//! session cookie's flags, forms refused without their token, and the figures on the pages
//! equal to the reports API's JSON.

use autofunnel::domain::{Email, LeadId};
use autofunnel::server::AppState;
use autofunnel::store::{LeadInput, Store};
use chrono::Utc;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, COOKIE, LOCATION, SET_COOKIE};

use crate::util::{Server, fid, project_of};

pub(crate) const TOKEN: &str = "dashboard-admin-token-0123456789";

const FUNNEL: &str = r#"name: "Course <pilot>"
from: "Shop <shop@example.com>"
entry: { api: true }
products:
  course: { price: 100, currency: EUR }
fields:
  region: { type: text, sample: Bavaria }
stages:
  - id: intro
    steps:
      - send: hello
      - wait: 1d
      - goto: pitch
  - id: pitch
    offer: course
    on: [{ event: purchase, product: course, goto: won }]
    steps:
      - send: { split: [offer-a, offer-b] }
      - wait: 3d
      - exit: not_converted
  - id: won
    steps:
      - exit: converted
"#;

/// A running server over a project with one funnel and `leads` leads in it; its base URL.
pub(crate) async fn dashboard(
    dir: &std::path::Path,
    leads: usize,
    token: Option<&str>,
) -> (Server, String, Store) {
    let store = Store::connect(&format!("sqlite://{}/d.db?mode=rwc", dir.display()))
        .await
        .unwrap();
    store.migrate().await.unwrap();
    let p = project_of(
        dir,
        &[
            ("funnels/course.yaml", FUNNEL),
            ("templates/course/hello.subject", "Hello"),
            ("templates/course/hello.html", "<p>Hi</p>"),
            ("templates/course/offer-a.subject", "A"),
            ("templates/course/offer-a.html", "<p>A</p>"),
            ("templates/course/offer-b.subject", "B"),
            ("templates/course/offer-b.html", "<p>B</p>"),
        ],
    );
    let now = Utc::now();
    let rt = crate::util::engine(&store, &p, now).await;
    let people: Vec<(Email, LeadInput)> = (0..leads)
        .map(|i| {
            let email = Email::parse(&format!("d{i}@example.com")).unwrap();
            (email, LeadInput::default())
        })
        .collect();
    let ids: Vec<LeadId> = store
        .import_leads(&people, autofunnel::domain::Consent::Confirmed, now)
        .await
        .unwrap();
    rt.enroll_many(&ids, &fid("course"), now).await.unwrap();
    let (listener, base) = Server::bind().await;
    let server = Server::start(
        listener,
        AppState {
            admin_token: token.map(std::sync::Arc::from),
            ..crate::util::off(&rt)
        },
    );
    (server, base, store)
}

fn client() -> reqwest::Client {
    crate::util::http_builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The `name=value` of each `Set-Cookie` of a response, with its attributes.
fn cookies(r: &reqwest::Response) -> Vec<String> {
    r.headers()
        .get_all(SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect()
}

fn value_of(set_cookie: &str) -> &str {
    set_cookie.split(';').next().unwrap()
}

/// `GET url` with the `Cookie` a browser signed in as `cookie` sends.
async fn get_as(
    c: &reqwest::Client,
    url: impl reqwest::IntoUrl,
    cookie: &str,
) -> reqwest::Response {
    c.get(url).header(COOKIE, cookie).send().await.unwrap()
}

/// Signs in as a browser would: the form, then the token; the session's `Cookie` value.
async fn sign_in(c: &reqwest::Client, base: &str) -> String {
    let r = c
        .get(format!("{base}/dashboard/login"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let login = value_of(&cookies(&r)[0]).to_string();
    let page = r.text().await.unwrap();
    let form = page
        .split("name=\"form\" value=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap()
        .to_string();
    let r = c
        .post(format!("{base}/dashboard/login"))
        .header(COOKIE, &login)
        .form(&[("form", form.as_str()), ("token", TOKEN)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let set = cookies(&r);
    let session = set.iter().find(|c| c.starts_with("af_session=")).unwrap();
    value_of(session).to_string()
}

/// The figures a page marks with `data-figure="NAME"`, in order.
fn figures(page: &str, name: &str) -> Vec<String> {
    page.split(&format!("data-figure=\"{name}\">"))
        .skip(1)
        .map(|s| s.split('<').next().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn signing_in_and_out() {
    let dir = tempfile::tempdir().unwrap();
    let (server, base, store) = dashboard(dir.path(), 3, Some(TOKEN)).await;
    let c = client();
    // No session: to the sign-in page, whatever the page.
    for path in ["/dashboard", "/dashboard/funnels/course"] {
        let r = c.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::SEE_OTHER, "{path}");
        assert_eq!(r.headers()[LOCATION], "/dashboard/login");
    }
    // The form, its one-time value in a cookie of the dashboard's paths only.
    let r = c
        .get(format!("{base}/dashboard/login"))
        .send()
        .await
        .unwrap();
    let csp = r.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(csp.starts_with("default-src 'none'"), "{csp}");
    let login = cookies(&r)[0].clone();
    assert!(
        login.contains("Path=/dashboard")
            && login.contains("HttpOnly")
            && login.contains("SameSite=Strict"),
        "{login}"
    );
    assert!(!login.contains("Secure"), "plain http: {login}");
    let page = r.text().await.unwrap();
    assert!(page.contains("<label for=\"token\">"), "a labelled input");
    let form = page
        .split("name=\"form\" value=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap();
    // Posted without the form's cookie (another site's form): refused.
    let r = c
        .post(format!("{base}/dashboard/login"))
        .form(&[("form", form), ("token", TOKEN)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert!(cookies(&r).iter().all(|c| !c.starts_with("af_session=")));
    // A wrong token: refused, said so.
    let r = c
        .post(format!("{base}/dashboard/login"))
        .header(COOKIE, value_of(&login))
        .form(&[("form", form), ("token", "nope")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("That is not the admin token.")
    );
    // The right one: a session cookie, HttpOnly, SameSite=Strict, 12 hours.
    let session = sign_in(&c, &base).await;
    let r = get_as(&c, format!("{base}/dashboard"), &session).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["cache-control"], "no-store");
    let page = r.text().await.unwrap();
    // Nothing is loaded from anywhere: no script, no external style, image or font.
    for bad in ["<script", "src=\"http", "href=\"http", "@import", "url("] {
        assert!(!page.contains(bad), "{bad} in the overview");
    }
    assert!(page.len() < 100_000, "{} bytes", page.len());
    // The name is escaped.
    assert!(page.contains("Course &lt;pilot&gt;"));
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_string();
    // Signing out without the form's token is refused; with it, the cookie goes and the
    // session is over even for a copy of the cookie.
    let r = c
        .post(format!("{base}/dashboard/logout"))
        .header(COOKIE, &session)
        .form(&[("csrf", "forged")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = c
        .post(format!("{base}/dashboard/logout"))
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER, "no cookie, no session");
    assert_eq!(r.headers()[LOCATION], "/dashboard/login");
    let r = c
        .post(format!("{base}/dashboard/logout"))
        .header(COOKIE, &session)
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert!(
        cookies(&r)
            .iter()
            .any(|c| c.starts_with("af_session=;") && c.contains("Max-Age=0"))
    );
    let r = get_as(&c, format!("{base}/dashboard"), &session).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER, "signed out");
    // Restarted on the same database, the server still refuses the signed-out session, and
    // takes a new one.
    server.stop().await;
    let rt = std::sync::Arc::new(
        autofunnel::runtime::Runtime::new(store.clone(), Vec::new(), "node-b", Utc::now())
            .await
            .unwrap(),
    );
    let (listener, base) = Server::bind().await;
    let server = Server::start(
        listener,
        AppState {
            admin_token: Some(std::sync::Arc::from(TOKEN)),
            ..crate::util::off(&rt)
        }
        .remembering_sign_outs()
        .await
        .unwrap(),
    );
    let r = get_as(&c, format!("{base}/dashboard"), &session).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER, "still signed out");
    let again = sign_in(&c, &base).await;
    let r = get_as(&c, format!("{base}/dashboard"), &again).await;
    assert_eq!(r.status(), StatusCode::OK);
    // A forged session: to the sign-in page.
    let forged = session.replacen('.', "9.", 1);
    let r = get_as(&c, format!("{base}/dashboard"), &forged).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    server.stop().await;
}

#[tokio::test]
async fn without_an_admin_token_there_is_no_dashboard() {
    let dir = tempfile::tempdir().unwrap();
    let (server, base, _store) = dashboard(dir.path(), 0, None).await;
    for path in ["/dashboard", "/dashboard/login"] {
        let r = client().get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{path}");
    }
    server.stop().await;
}

/// An outbox the store cannot read: the overview says so, not a health panel of zeros that
/// reads as all well.
#[tokio::test]
async fn the_overview_says_when_its_health_cannot_be_read() {
    use sea_orm::ConnectionTrait;
    let dir = tempfile::tempdir().unwrap();
    let (server, base, _store) = dashboard(dir.path(), 3, Some(TOKEN)).await;
    let c = client();
    let session = sign_in(&c, &base).await;
    let r = get_as(&c, format!("{base}/dashboard"), &session).await;
    assert_eq!(r.status(), StatusCode::OK);
    let url = format!("sqlite://{}/d.db", dir.path().display());
    let db = sea_orm::Database::connect(&url).await.unwrap();
    db.execute_unprepared("ALTER TABLE messages RENAME TO messages_away")
        .await
        .unwrap();
    let r = get_as(&c, format!("{base}/dashboard"), &session).await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    let page = r.text().await.unwrap();
    assert!(
        page.contains("Cannot show this") && figures(&page, "outbox-queued").is_empty(),
        "{page}"
    );
    server.stop().await;
}

/// The overview's and the funnel page's figures are the reports API's.
#[tokio::test]
async fn the_pages_show_the_reports_figures() {
    let dir = tempfile::tempdir().unwrap();
    let (server, base, _store) = dashboard(dir.path(), 7, Some(TOKEN)).await;
    let c = client();
    let session = sign_in(&c, &base).await;
    let page = |path: String| {
        let c = c.clone();
        let session = session.clone();
        async move {
            let r = c.get(path).header(COOKIE, session).send().await.unwrap();
            assert_eq!(r.status(), StatusCode::OK);
            r.text().await.unwrap()
        }
    };
    let api = |path: String| {
        let c = c.clone();
        async move {
            let r = c.get(path).bearer_auth(TOKEN).send().await.unwrap();
            assert_eq!(r.status(), StatusCode::OK);
            r.json::<serde_json::Value>().await.unwrap()
        }
    };
    let overview = page(format!("{base}/dashboard")).await;
    // Today, this week, 30 days: the 7 runs that entered today.
    assert_eq!(figures(&overview, "signups"), ["7", "7", "7"]);
    // In flight: all 7 in the first stage.
    assert_eq!(figures(&overview, "in-flight"), ["7", "0", "0"]);
    assert_eq!(figures(&overview, "awaiting"), ["0"], "confirmed leads");
    assert_eq!(figures(&overview, "outbox-queued"), ["7"], "one email each");
    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    let json = api(format!("{base}/api/v1/reports/funnels/course?from={today}")).await;
    assert_eq!(json["entered"], 7);
    let funnel = page(format!(
        "{base}/dashboard/funnels/course?days=7&cohort=entry"
    ))
    .await;
    assert_eq!(figures(&funnel, "entered"), [json["entered"].to_string()]);
    let leads_in: Vec<String> = json["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["leads_in"].to_string())
        .collect();
    assert_eq!(figures(&funnel, "leads-in"), leads_in);
    assert!(
        funnel.contains("<svg") && funnel.contains("role=\"img\""),
        "the chart, labelled"
    );
    assert!(
        funnel.contains("data-template=\"hello\""),
        "the per-email table"
    );
    // The same figures to download.
    let r = c
        .get(format!(
            "{base}/dashboard/funnels/course/report.json?days=7"
        ))
        .header(COOKIE, &session)
        .send()
        .await
        .unwrap();
    let downloaded: serde_json::Value = r.json().await.unwrap();
    assert_eq!(downloaded["entered"], 7);
    let r = get_as(
        &c,
        format!("{base}/dashboard/funnels/course/report.csv?days=7"),
        &session,
    )
    .await;
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/csv")
    );
    assert!(r.text().await.unwrap().lines().count() >= 4);
    // The calendar view switch is a plain link.
    assert!(funnel.contains("href=\"/dashboard/funnels/course?days=7&amp;cohort=calendar\""));
    // The map: the file's stages with the leads in each now, and every way on.
    let map = page(format!("{base}/dashboard/funnels/course/map")).await;
    assert_eq!(figures(&map, "in-stage"), ["7", "0", "0"]);
    for way in [
        "<td>intro</td><td>pitch</td><td>after 1d</td>",
        "<td>pitch</td><td>won</td><td>on purchase product=course</td>",
        "<td>pitch</td><td>exit not_converted</td><td>after 3d</td>",
    ] {
        assert!(map.contains(way), "{way}");
    }
    assert!(
        map.contains("offer course · €100"),
        "the offer with its price"
    );
    // Cohorts by week: this week's 7 entries; attribution: no purchase yet, every model.
    let cohorts = page(format!("{base}/dashboard/funnels/course/cohorts")).await;
    assert_eq!(
        figures(&cohorts, "cohort-entered")
            .first()
            .map(String::as_str),
        Some("7")
    );
    for model in ["first", "last", "linear", "time_decay", "position"] {
        let a = page(format!(
            "{base}/dashboard/funnels/course/attribution?model={model}"
        ))
        .await;
        assert_eq!(figures(&a, "purchases"), ["0"], "{model}");
    }
    let r = c
        .get(format!(
            "{base}/dashboard/funnels/course/attribution?model=magic"
        ))
        .header(COOKIE, &session)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::UNPROCESSABLE_ENTITY,
        "an unknown model is named"
    );
    // Sources: the leads were imported, so one group with no first touch; and by variant.
    let sources = page(format!(
        "{base}/dashboard/funnels/course/slices?by=utm_source"
    ))
    .await;
    assert_eq!(figures(&sources, "slice-entered"), ["7"]);
    assert!(
        sources.contains("slices?by=field:region"),
        "a declared field to slice by"
    );
    // No lead has a region yet: said so.
    let r = c
        .get(format!(
            "{base}/dashboard/funnels/course/slices?by=field:region"
        ))
        .header(COOKIE, &session)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(r.text().await.unwrap().contains("region"));
    let variants = page(format!("{base}/dashboard/funnels/course/slices?by=variant")).await;
    assert!(
        variants.contains("<h2 id=\"slices\">Sources: variant</h2>"),
        "{variants}"
    );
    // What if: the forecast as observed and with a stage converting better.
    let w = page(format!(
        "{base}/dashboard/funnels/course/whatif?days=30&inflow=10&set_intro=20"
    ))
    .await;
    assert!(
        w.contains("data-figure=\"conversions-scenario\""),
        "a projection"
    );
    assert!(
        w.contains("id=\"set-intro\"") && w.contains("value=\"20\""),
        "the inputs kept"
    );
    let r = get_as(
        &c,
        format!("{base}/dashboard/funnels/course/whatif?days=0"),
        &session,
    )
    .await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("days: a whole number of days from 1 to 366")
    );
    // A funnel that does not run: said so, 404.
    let r = get_as(&c, format!("{base}/dashboard/funnels/nope"), &session).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    server.stop().await;
}

/// A lead found by address, its page and timeline, and the admin actions through their forms:
/// each refused without the session's token; erase only once the address is typed again.
#[tokio::test]
async fn a_lead_found_tagged_taken_out_and_erased() {
    let dir = tempfile::tempdir().unwrap();
    let (server, base, store) = dashboard(dir.path(), 2, Some(TOKEN)).await;
    let c = client();
    let session = sign_in(&c, &base).await;
    let get = |path: String| {
        let (c, session) = (c.clone(), session.clone());
        async move { c.get(path).header(COOKIE, session).send().await.unwrap() }
    };
    let post = |path: String, form: Vec<(&'static str, String)>| {
        let (c, session) = (c.clone(), session.clone());
        async move {
            c.post(path)
                .header(COOKIE, session)
                .form(&form)
                .send()
                .await
                .unwrap()
        }
    };
    let r = get(format!("{base}/dashboard/leads?email=D1@example.com")).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let at = r.headers()[LOCATION].to_str().unwrap().to_string();
    assert!(at.starts_with("/dashboard/leads/"), "{at}");
    let id: i64 = at.rsplit('/').next().unwrap().parse().unwrap();
    // The lead opens its email and clicks a link in it, through the real tracking links.
    let message: i64 = store
        .table_text("messages")
        .await
        .unwrap()
        .iter()
        .find(|row| row.contains(&("lead_id".to_string(), id.to_string())))
        .and_then(|row| row.iter().find(|(k, _)| k == "id"))
        .map(|(_, v)| v.parse().unwrap())
        .expect("the lead's email");
    let secret = b"link secret";
    let open = autofunnel::tokens::open_token(secret, message);
    assert!(
        get(format!("{base}/o/{open}.gif"))
            .await
            .status()
            .is_success()
    );
    let click = autofunnel::tokens::Click {
        message,
        link: "book".into(),
        url: "https://example.com/book".into(),
        expires: None,
    };
    let r = get(format!("{base}/r/{}", click.token(secret))).await;
    assert!(r.status().is_redirection(), "{}", r.status());
    let page = get(format!("{base}{at}")).await.text().await.unwrap();
    assert!(
        page.contains("d1@example.com") && page.contains("entered course"),
        "the timeline"
    );
    assert!(
        page.contains("opened · clicked book"),
        "the email's opens and clicks: {page}"
    );
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_string();
    // Without the token: refused, nothing done.
    let r = post(
        format!("{base}{at}/tag"),
        vec![("csrf", "x".into()), ("tag", "vip".into())],
    )
    .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // Tagged, said so.
    let r = post(
        format!("{base}{at}/tag"),
        vec![("csrf", csrf.clone()), ("tag", "vip".into())],
    )
    .await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        r.headers()[LOCATION],
        format!("/dashboard/leads/{id}?done=tagged")
    );
    let page = get(format!("{base}/dashboard/leads/{id}?done=tagged"))
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(figures(&page, "tags"), ["vip"]);
    assert!(page.contains("Tagged."));
    // A bad tag: said what is wrong, 422.
    let r = post(
        format!("{base}{at}/tag"),
        vec![("csrf", csrf.clone()), ("tag", "Not A Tag".into())],
    )
    .await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    // Taken out of the funnel, then not in it any more.
    let r = post(
        format!("{base}{at}/remove"),
        vec![("csrf", csrf.clone()), ("funnel", "course".into())],
    )
    .await;
    assert_eq!(
        r.headers()[LOCATION],
        format!("/dashboard/leads/{id}?done=removed")
    );
    let r = post(
        format!("{base}{at}/remove"),
        vec![("csrf", csrf.clone()), ("funnel", "course".into())],
    )
    .await;
    assert_eq!(
        r.headers()[LOCATION],
        format!("/dashboard/leads/{id}?done=not_in")
    );
    // Erase asks for the address again; another address erases nothing.
    let confirm = get(format!("{base}{at}/erase")).await.text().await.unwrap();
    assert!(confirm.contains("<label for=\"confirm\">"));
    let r = post(
        format!("{base}{at}/erase"),
        vec![("csrf", csrf.clone()), ("confirm", "d0@example.com".into())],
    )
    .await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        store
            .leads(&[LeadId(id)])
            .await
            .unwrap()
            .contains_key(&LeadId(id))
    );
    let r = post(
        format!("{base}{at}/erase"),
        vec![("csrf", csrf.clone()), ("confirm", "d1@example.com".into())],
    )
    .await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(r.headers()[LOCATION], "/dashboard/leads?done=erased");
    assert!(
        store.leads(&[LeadId(id)]).await.unwrap().is_empty(),
        "erased"
    );
    let r = get(format!("{base}/dashboard/leads?email=d1@example.com")).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    server.stop().await;
}

/// Hostile input on every dashboard page and form, signed in: each answers with a page or a
/// refusal (never a server error), and what was sent is never echoed as markup.
#[tokio::test]
async fn hostile_input_is_refused_or_shown_escaped() {
    let dir = tempfile::tempdir().unwrap();
    let (server, base, _store) = dashboard(dir.path(), 2, Some(TOKEN)).await;
    let c = client();
    let session = sign_in(&c, &base).await;
    let long = "x".repeat(5_000);
    let values = [
        "",
        "0",
        "-1",
        "99999999999999999999",
        "1e9",
        "NaN",
        "abc",
        "%00",
        "%FF%FE",
        "a%0Ab",
        "..%2F..%2Fetc%2Fpasswd",
        "%3Cscript%3Ealert(1)%3C%2Fscript%3E",
        "field:",
        "field:Bad%20Name",
        "field:region",
        "%E2%88%9E",
        long.as_str(),
    ];
    let gets = [
        "/dashboard?days={}",
        "/dashboard/funnels/{}",
        "/dashboard/funnels/course?days={}&cohort={}",
        "/dashboard/funnels/course/map?x={}",
        "/dashboard/funnels/course/cohorts?weeks={}",
        "/dashboard/funnels/course/slices?by={}",
        "/dashboard/funnels/course/attribution?model={}",
        "/dashboard/funnels/course/whatif?days={}&inflow={}&set_intro={}",
        "/dashboard/funnels/course/{}",
        "/dashboard/funnels/course/report.json?days={}&cohort={}",
        "/dashboard/funnels/course/report.csv?days={}",
        "/dashboard/leads?email={}",
        "/dashboard/leads/{}",
        "/dashboard/leads/{}/erase",
    ];
    for path in gets {
        for v in values {
            let url = format!("{base}{}", path.replace("{}", v));
            let r = c.get(&url).header(COOKIE, &session).send().await.unwrap();
            let status = r.status();
            let html = r
                .headers()
                .get(CONTENT_TYPE)
                .is_some_and(|t| t.to_str().unwrap().starts_with("text/html"));
            let body = r.text().await.unwrap();
            assert!(
                !status.is_server_error(),
                "{url}: {status}: {}",
                &body[..body.len().min(300)]
            );
            assert!(
                !(html && body.contains("<script>alert(1)")),
                "{url}: echoed as markup"
            );
        }
    }
    let posts = [
        "/dashboard/logout",
        "/dashboard/leads/{}/tag",
        "/dashboard/leads/{}/enroll",
        "/dashboard/leads/{}/remove",
        "/dashboard/leads/{}/erase",
        "/dashboard/leads/1/{}",
        "/dashboard/login",
    ];
    for path in posts {
        for v in values {
            let url = format!("{base}{}", path.replace("{}", v));
            for form in [
                vec![("csrf", v), ("tag", v), ("funnel", v), ("confirm", v)],
                vec![("form", v), ("token", v)],
            ] {
                let r = c
                    .post(&url)
                    .header(COOKIE, &session)
                    .form(&form)
                    .send()
                    .await
                    .unwrap();
                assert!(!r.status().is_server_error(), "{url}: {}", r.status());
            }
        }
    }
    server.stop().await;
}
