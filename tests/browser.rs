//! The dashboard in a real browser: headless Chromium driven over WebDriver (chromedriver) by
//! fantoccini, against the real server. Signs in, reads the overview's figures off the page
//! and compares them with the reports API's JSON, switches to the calendar view, opens every
//! page of a funnel, finds a lead by address and erases it after confirming, signs out; saves
//! a screenshot of each page under `target/dashboard-screens/` and checks none is blank.
//! Needs `AUTOFUNNEL_TEST_CHROMEDRIVER` (the chromedriver to run; `.ci/run` installs Debian's
//! chromium and chromium-driver and sets it); without it the test says it was skipped.

use fantoccini::{ClientBuilder, Locator};

use crate::dashboard::{TOKEN, dashboard};

/// chromedriver on a free port of 127.0.0.1, stopped when dropped.
struct Driver {
    child: std::process::Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn driver(path: &str) -> Driver {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    #[allow(clippy::zombie_processes)] // waited for by `Driver`'s drop
    let child = std::process::Command::new(path)
        .arg(format!("--port={port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("chromedriver starts");
    let url = format!("http://127.0.0.1:{port}");
    // Ready when its status says so: a bounded wait for another process to start.
    for _ in 0..100 {
        if let Ok(r) = reqwest::get(format!("{url}/status")).await
            && let Ok(v) = r.json::<serde_json::Value>().await
            && v["value"]["ready"] == true
        {
            return Driver { child, url };
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("chromedriver did not start");
}

#[tokio::test]
async fn the_dashboard_in_a_real_browser() {
    let Ok(chromedriver) = std::env::var("AUTOFUNNEL_TEST_CHROMEDRIVER") else {
        eprintln!(
            "skipped: set AUTOFUNNEL_TEST_CHROMEDRIVER to a chromedriver to run the browser test"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (server, base, store) = dashboard(dir.path(), 7, Some(TOKEN)).await;
    let driver = driver(&chromedriver).await;
    let profile = tempfile::tempdir().unwrap();
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": std::env::var("AUTOFUNNEL_TEST_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()),
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--window-size=1200,1600",
                format!("--user-data-dir={}", profile.path().display()),
            ],
        }),
    );
    let b = ClientBuilder::native()
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a browser session");
    let shots = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/dashboard-screens");
    std::fs::create_dir_all(&shots).unwrap();
    let mut sizes: Vec<(String, usize)> = Vec::new();
    let shoot = |name: &'static str, png: Vec<u8>, sizes: &mut Vec<(String, usize)>| {
        std::fs::write(shots.join(format!("{name}.png")), &png).unwrap();
        sizes.push((name.to_string(), png.len()));
    };
    let path = |b: &fantoccini::Client| {
        let b = b.clone();
        async move {
            let u = b.current_url().await.unwrap();
            match u.query() {
                Some(q) => format!("{}?{q}", u.path()),
                None => u.path().to_string(),
            }
        }
    };
    let texts = |b: &fantoccini::Client, css: &'static str| {
        let b = b.clone();
        async move {
            let mut out = Vec::new();
            for e in b.find_all(Locator::Css(css)).await.unwrap() {
                out.push(e.text().await.unwrap());
            }
            out
        }
    };
    // A click that navigates returns before the next page is there: wait for an element only
    // that page has (fantoccini polls for it, within a bound).
    let landed = |b: &fantoccini::Client, css: &'static str| {
        let b = b.clone();
        async move {
            b.wait()
                .at_most(std::time::Duration::from_secs(20))
                .for_element(Locator::Css(css))
                .await
                .unwrap_or_else(|e| panic!("no {css}: {e}"));
        }
    };
    // What a blank page looks like, to tell a page from nothing.
    b.goto("about:blank").await.unwrap();
    let blank = b.screenshot().await.unwrap().len();

    // No session: the sign-in page.
    b.goto(&format!("{base}/dashboard")).await.unwrap();
    assert_eq!(path(&b).await, "/dashboard/login");
    shoot("login", b.screenshot().await.unwrap(), &mut sizes);
    b.find(Locator::Css("#token"))
        .await
        .unwrap()
        .send_keys(TOKEN)
        .await
        .unwrap();
    b.find(Locator::Css("main button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    landed(&b, "[data-funnel]").await;
    assert_eq!(path(&b).await, "/dashboard");

    // The overview's figures are the reports API's.
    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    let json: serde_json::Value = crate::util::http()
        .get(format!("{base}/api/v1/reports/funnels/course?from={today}"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let entered = json["entered"].to_string();
    assert_eq!(
        texts(&b, "[data-figure=signups]").await,
        [entered.as_str(), entered.as_str(), entered.as_str()]
    );
    assert_eq!(texts(&b, "[data-figure=in-flight]").await, ["7", "0", "0"]);
    shoot("overview", b.screenshot().await.unwrap(), &mut sizes);

    // The funnel page, then its calendar view through the plain link.
    b.find(Locator::Css("section.card h2 a"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    landed(&b, "[data-report=stages]").await;
    assert_eq!(path(&b).await, "/dashboard/funnels/course");
    assert_eq!(texts(&b, "[data-figure=entered]").await, [entered.as_str()]);
    shoot("funnel", b.screenshot().await.unwrap(), &mut sizes);
    b.find(Locator::LinkText("Calendar view"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    landed(&b, "p.switch a[href*='cohort=entry']").await;
    assert!(
        path(&b).await.ends_with("cohort=calendar"),
        "{}",
        path(&b).await
    );
    let heading = b
        .find(Locator::Css("main > p.muted"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(heading.starts_with("Calendar view:"), "{heading}");
    shoot("funnel-calendar", b.screenshot().await.unwrap(), &mut sizes);
    for (tab, name, css) in [
        ("Cohorts", "cohorts", "[data-report=cohorts]"),
        ("Sources", "slices", "[data-report=slices]"),
        ("Attribution", "attribution", "[data-report=channels]"),
        ("What if", "whatif", "#whatif"),
        ("Funnel map", "map", "[data-report=map]"),
    ] {
        b.find(Locator::LinkText(tab))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        landed(&b, css).await;
        assert!(path(&b).await.ends_with(name), "{tab}: {}", path(&b).await);
        shoot(name, b.screenshot().await.unwrap(), &mut sizes);
    }

    // A lead found by address and erased after typing the address again.
    b.find(Locator::LinkText("Leads"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    landed(&b, "#email").await;
    b.find(Locator::Css("#email"))
        .await
        .unwrap()
        .send_keys("d3@example.com")
        .await
        .unwrap();
    b.find(Locator::Css("form[role=search] button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    landed(&b, "[data-lead]").await;
    let lead_path = path(&b).await;
    assert!(lead_path.starts_with("/dashboard/leads/"), "{lead_path}");
    shoot("lead", b.screenshot().await.unwrap(), &mut sizes);
    let id: i64 = lead_path.rsplit('/').next().unwrap().parse().unwrap();
    b.find(Locator::Css(&format!(
        "form[action='/dashboard/leads/{id}/erase'] button"
    )))
    .await
    .unwrap()
    .click()
    .await
    .unwrap();
    landed(&b, "#confirm").await;
    shoot("erase", b.screenshot().await.unwrap(), &mut sizes);
    b.find(Locator::Css("#confirm"))
        .await
        .unwrap()
        .send_keys("d3@example.com")
        .await
        .unwrap();
    b.find(Locator::Css("main form button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    // The browser follows the answer's redirect; wait for the page it lands on.
    let status = b
        .wait()
        .at_most(std::time::Duration::from_secs(10))
        .for_element(Locator::Css("[role=status]"))
        .await
        .unwrap();
    assert_eq!(status.text().await.unwrap(), "The lead was erased.");
    assert_eq!(path(&b).await, "/dashboard/leads?done=erased");
    let lead = autofunnel::domain::LeadId(id);
    assert!(store.leads(&[lead]).await.unwrap().is_empty(), "erased");

    // Signing out: back to the sign-in page, and the dashboard with it.
    b.find(Locator::Css("header button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    landed(&b, "#token").await;
    assert_eq!(path(&b).await, "/dashboard/login");
    b.goto(&format!("{base}/dashboard/funnels/course"))
        .await
        .unwrap();
    assert_eq!(path(&b).await, "/dashboard/login");

    // Every page drew something.
    for (name, size) in &sizes {
        assert!(
            *size > blank * 2,
            "{name}: {size} bytes against a blank page's {blank}"
        );
    }
    b.close().await.unwrap();
    server.stop().await;
}
