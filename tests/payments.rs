//! Payment providers' notifications through the real server (`POST /hooks/pay/{name}`), each
//! built from the provider's documented example and signed here by hand, the way the
//! provider's documentation describes: a good one is a purchase (once, however often it is
//! sent) answered with the exact bytes the provider expects; forged, stale, unknown-product
//! and wrong-currency ones are refused and store nothing; refunds are `refund` events.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use autofunnel::domain::Email;
use autofunnel::payments;
use autofunnel::server::AppState;
use autofunnel::server::pay::Payments;
use autofunnel::settings::PaymentSettings;
use autofunnel::store::Store;
use base64::Engine as _;
use hmac::{KeyInit, Mac};
use serde_json::{Value, json};
use sha2::Digest as _;

use crate::util::{Server, on_both_backends, project_of};

fn project(dir: &Path) -> Arc<autofunnel::project::Project> {
    project_of(
        dir,
        &[(
            "funnels/course.yaml",
            "name: Course\nfrom: \"Shop <shop@example.com>\"\nentry: { api: true }\n\
             products:\n  course: { name: Course, price: 14900, currency: RUB }\n\
             \x20 book: { name: Book, price: 10, currency: USD }\n\
             on:\n  - { event: purchase, product: course, exit: converted }\n\
             stages:\n  - id: pitch\n    offer: course\n    steps:\n      - wait: 30d\n      - exit: not_converted\n",
        )],
    )
}

const SECRET: &str = "provider secret 0123456789";

fn hmac(key: &str, data: &[u8]) -> Vec<u8> {
    let mut m = hmac::Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).unwrap();
    m.update(data);
    m.finalize().into_bytes().to_vec()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Six accounts, one per provider, plus a YooKassa account left on its published addresses.
fn accounts(yookassa_api: &str) -> payments::Accounts {
    let account = |provider: &str, extra: PaymentSettings| PaymentSettings {
        provider: Some(provider.into()),
        secret_env: Some("SECRET".into()),
        products: [
            ("Доступ к курсу".to_string(), "course".to_string()),
            ("plink_1Course".to_string(), "course".to_string()),
        ]
        .into(),
        ..extra
    };
    let mut s = BTreeMap::new();
    s.insert(
        "yookassa".to_string(),
        account(
            "yookassa",
            PaymentSettings {
                shop_id: Some("54401".into()),
                allowed_ips: Some(vec!["127.0.0.1".into()]),
                api_url: Some(yookassa_api.into()),
                ..Default::default()
            },
        ),
    );
    s.insert(
        "yookassa-published".to_string(),
        account("yookassa", PaymentSettings::default()),
    );
    s.insert(
        "cloudpayments".to_string(),
        account("cloudpayments", PaymentSettings::default()),
    );
    s.insert(
        "prodamus".to_string(),
        account("prodamus", PaymentSettings::default()),
    );
    s.insert(
        "robokassa".to_string(),
        account("robokassa", PaymentSettings::default()),
    );
    s.insert(
        "tbank".to_string(),
        account(
            "tbank",
            PaymentSettings {
                terminal_key: Some("TinkoffBankTest".into()),
                ..Default::default()
            },
        ),
    );
    s.insert(
        "stripe".to_string(),
        account("stripe", PaymentSettings::default()),
    );
    payments::accounts(&s, &|v| (v == "SECRET").then(|| SECRET.to_string())).unwrap()
}

/// A stand-in for YooKassa's API on 127.0.0.1: `GET /payments/{id}` answers the payment as
/// it stands (succeeded, unless its id says it was canceled) to the shop's credentials.
async fn yookassa_api() -> String {
    use axum::extract::Path;
    use axum::http::{HeaderMap, StatusCode};
    let app = axum::Router::new()
        .route(
            "/v3/payments/{id}",
            axum::routing::get(|Path(id): Path<String>, h: HeaderMap| async move {
                let want = format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(format!("54401:{SECRET}"))
                );
                if h.get("authorization").and_then(|v| v.to_str().ok()) != Some(want.as_str()) {
                    return (StatusCode::UNAUTHORIZED, axum::Json(json!({}))).into_response();
                }
                let status = if id.starts_with("canceled") {
                    "canceled"
                } else {
                    "succeeded"
                };
                axum::Json(yookassa_payment(&id, status, "14900.00", "RUB")).into_response()
            }),
        )
        .route(
            "/v3/refunds/{id}",
            axum::routing::get(|Path(id): Path<String>| async move {
                axum::Json(
                    json!({ "id": id, "payment_id": "22d6d597-000f-5000-9000-145f6df21d6f",
                    "status": "succeeded", "amount": { "value": "14900.00", "currency": "RUB" },
                    "created_at": "2026-12-01T10:00:00.000Z" }),
                )
            }),
        );
    use axum::response::IntoResponse as _;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/v3", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    base
}

/// A payment object as yookassa.ru/developers/api ("Объект платежа") shows it, with the
/// metadata the shop set.
fn yookassa_payment(id: &str, status: &str, value: &str, currency: &str) -> Value {
    json!({
        "id": id, "status": status, "paid": status == "succeeded",
        "amount": { "value": value, "currency": currency },
        "authorization_details": { "rrn": "10000000000", "auth_code": "000000" },
        "created_at": "2026-12-01T09:27:54.691Z",
        "description": "Заказ №72",
        "metadata": { "email": "yoo@example.com", "product": "course" },
        "payment_method": { "type": "bank_card", "id": id, "saved": false },
        "refundable": true, "test": false
    })
}

struct Shop {
    base: String,
    client: reqwest::Client,
    store: Store,
}

impl Shop {
    async fn post(
        &self,
        name: &str,
        headers: &[(&str, String)],
        body: impl Into<String>,
    ) -> (u16, String) {
        let mut r = self.client.post(format!("{}/hooks/pay/{name}", self.base));
        for (k, v) in headers {
            r = r.header(*k, v);
        }
        let r = r.body(body.into()).send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    /// The kinds and payloads of a buyer's events (none without a lead).
    async fn events(&self, email: &str) -> Vec<(String, Value)> {
        let Some(lead) = self
            .store
            .lead_by_email(&Email::parse(email).unwrap())
            .await
            .unwrap()
        else {
            return Vec::new();
        };
        self.store.lead_events(lead.id).await.unwrap()
    }
}

fn form() -> (&'static str, String) {
    (
        "content-type",
        "application/x-www-form-urlencoded".to_string(),
    )
}

async fn providers(store: Store) {
    store.migrate().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = project(dir.path());
    let rt = crate::util::engine(&store, &p, chrono::Utc::now()).await;
    let api = yookassa_api().await;
    let (listener, base) = Server::bind().await;
    let server = Server::start(
        listener,
        AppState {
            payments: Payments::new(accounts(&api)),
            ..crate::util::off(&rt)
        },
    );
    let shop = Shop {
        base,
        client: crate::util::http(),
        store: store.clone(),
    };
    let purchase = |amount: f64, currency: &str| {
        (
            "purchase".to_string(),
            json!({ "product": "course", "amount": amount, "currency": currency }),
        )
    };

    // YooKassa (yookassa.ru/developers/using-api/webhooks, "Входящие уведомления"): the
    // notification is the documented one; the API re-read decides.
    let note = |event: &str, object: Value| {
        json!({ "type": "notification", "event": event, "object": object }).to_string()
    };
    let paid = note(
        "payment.succeeded",
        yookassa_payment(
            "22d6d597-000f-5000-9000-145f6df21d6f",
            "succeeded",
            "14900.00",
            "RUB",
        ),
    );
    for _ in 0..2 {
        assert_eq!(
            shop.post("yookassa", &[], paid.clone()).await,
            (200, r#"{"received":true}"#.into())
        );
    }
    assert_eq!(
        shop.events("yoo@example.com").await,
        [purchase(14900.0, "RUB")]
    );
    // Claimed succeeded, but the API says canceled: nothing recorded.
    let claimed = note(
        "payment.succeeded",
        yookassa_payment("canceled-1", "succeeded", "14900.00", "RUB"),
    );
    assert_eq!(shop.post("yookassa", &[], claimed).await.0, 200);
    assert_eq!(shop.events("yoo@example.com").await.len(), 1);
    // From outside YooKassa's published addresses: refused.
    let (status, _) = shop.post("yookassa-published", &[], paid.clone()).await;
    assert_eq!(status, 401);
    // The refund, re-read too.
    let refund = note(
        "refund.succeeded",
        json!({ "id": "216749f7-0016-50be-b000-078d43a63ae4",
        "payment_id": "22d6d597-000f-5000-9000-145f6df21d6f", "status": "succeeded",
        "amount": { "value": "14900.00", "currency": "RUB" }, "created_at": "2026-12-01T10:00:00.000Z" }),
    );
    assert_eq!(shop.post("yookassa", &[], refund).await.0, 200);
    assert_eq!(
        shop.events("yoo@example.com").await[1],
        (
            "refund".to_string(),
            json!({ "product": "course", "amount": 14900.0, "currency": "RUB" })
        )
    );

    // CloudPayments (developers.cloudpayments.ru, "Уведомления" → Pay; "Проверка
    // уведомлений"): a form, Content-HMAC = base64(HMAC-SHA256(body)).
    let cp = |fields: &str| {
        let sig = base64::engine::general_purpose::STANDARD.encode(hmac(SECRET, fields.as_bytes()));
        (vec![form(), ("content-hmac", sig)], fields.to_string())
    };
    let pay = "TransactionId=1211&Amount=14900.00&Currency=RUB&PaymentAmount=14900.00&PaymentCurrency=RUB\
        &OperationType=Payment&InvoiceId=1234567&AccountId=user_x&Email=cp%40example.com\
        &DateTime=2026-12-01+09%3A49%3A42&TestMode=0&Status=Completed\
        &Description=%D0%94%D0%BE%D1%81%D1%82%D1%83%D0%BF+%D0%BA+%D0%BA%D1%83%D1%80%D1%81%D1%83";
    let (h, body) = cp(pay);
    for _ in 0..2 {
        assert_eq!(
            shop.post("cloudpayments", &h, body.clone()).await,
            (200, r#"{"code":0}"#.into())
        );
    }
    assert_eq!(
        shop.events("cp@example.com").await,
        [purchase(14900.0, "RUB")]
    );
    let forged = pay.replace("14900.00", "1.00");
    assert_eq!(shop.post("cloudpayments", &h, forged).await.0, 401);
    let (h2, other) = cp(&pay
        .replace("TransactionId=1211", "TransactionId=1212")
        .replace("Currency=RUB", "Currency=USD"));
    let (status, text) = shop.post("cloudpayments", &h2, other).await;
    assert_eq!(status, 422, "{text}");
    assert!(text.contains("priced in RUB"), "{text}");
    let (h3, unknown) = cp(&pay
        .replace("TransactionId=1211", "TransactionId=1213")
        .replace("Description=", "Description=Other"));
    let (status, text) = shop.post("cloudpayments", &h3, unknown).await;
    assert_eq!(status, 422, "{text}");
    assert!(text.contains("is no product"), "{text}");
    assert_eq!(shop.events("cp@example.com").await.len(), 1);
    let (h4, refund) = cp(
        "TransactionId=1300&PaymentTransactionId=1211&Amount=14900.00&OperationType=Refund\
        &InvoiceId=1234567&Email=cp%40example.com&DateTime=2026-12-02+09%3A00%3A00",
    );
    assert_eq!(
        shop.post("cloudpayments", &h4, refund).await,
        (200, r#"{"code":0}"#.into())
    );
    assert_eq!(shop.events("cp@example.com").await[1].0, "refund");

    // Prodamus (help.prodamus.ru, "Уведомления об оплате"): the documented form; Sign is
    // HMAC-SHA256 of the sorted fields as PHP's json_encode writes them, written out here.
    let fields = "date=2026-12-01T11%3A21%3A28%2B03%3A00&order_id=1&order_num=test&sum=14900.00\
        &currency=rub&customer_email=pro%40example.com&payment_status=success\
        &products%5B0%5D%5Bname%5D=%D0%94%D0%BE%D1%81%D1%82%D1%83%D0%BF+%D0%BA+%D0%BA%D1%83%D1%80%D1%81%D1%83\
        &products%5B0%5D%5Bprice%5D=14900.00&products%5B0%5D%5Bquantity%5D=1&products%5B0%5D%5Bsum%5D=14900.00";
    let signed = r#"{"currency":"rub","customer_email":"pro@example.com","date":"2026-12-01T11:21:28+03:00","order_id":"1","order_num":"test","payment_status":"success","products":[{"name":"Доступ к курсу","price":"14900.00","quantity":"1","sum":"14900.00"}],"sum":"14900.00"}"#;
    let sign = hex(&hmac(SECRET, signed.as_bytes()));
    let h = [form(), ("sign", sign.clone())];
    for _ in 0..2 {
        assert_eq!(
            shop.post("prodamus", &h, fields).await,
            (200, "success".into())
        );
    }
    assert_eq!(
        shop.events("pro@example.com").await,
        [purchase(14900.0, "RUB")]
    );
    assert_eq!(
        shop.post("prodamus", &h, fields.replace("sum=14900.00", "sum=1.00"))
            .await
            .0,
        401
    );
    let h = [form(), ("sign", sign.to_uppercase())];
    assert_eq!(
        shop.post("prodamus", &h, fields).await.0,
        200,
        "either case of hex"
    );

    // Robokassa (docs.robokassa.ru, "Оповещение об оплате на ResultURL"): MD5 of
    // OutSum:InvId:Password#2:Shp_…, answered OK{InvId}.
    let robo = |inv: &str, product: &str| {
        let base =
            format!("14900.00:{inv}:{SECRET}:Shp_email=robo@example.com:Shp_product={product}");
        let sig = hex(&md5::Md5::digest(base.as_bytes()));
        format!(
            "OutSum=14900.00&InvId={inv}&SignatureValue={sig}&Shp_email=robo%40example.com&Shp_product={product}&IsTest=1"
        )
    };
    for _ in 0..2 {
        assert_eq!(
            shop.post("robokassa", &[form()], robo("450009", "course"))
                .await,
            (200, "OK450009".into())
        );
    }
    assert_eq!(
        shop.events("robo@example.com").await,
        [purchase(14900.0, "RUB")]
    );
    let forged = robo("450010", "course").replace("OutSum=14900.00", "OutSum=1.00");
    assert_eq!(shop.post("robokassa", &[form()], forged).await.0, 401);
    // A product priced in USD paid in the shop's roubles: refused.
    let (status, text) = shop
        .post("robokassa", &[form()], robo("450011", "book"))
        .await;
    assert_eq!(status, 422, "{text}");
    assert_eq!(shop.events("robo@example.com").await.len(), 1);

    // T-Bank (tbank.ru/kassa/dev/payments, "Уведомления"; "Подпись запроса"): Token =
    // SHA-256 of the sorted top-level values with Password; Amount in kopecks; answered OK.
    let tb = |status: &str, amount: i64, terminal: &str| {
        let mut v = json!({ "TerminalKey": terminal, "OrderId": "21050", "Success": true,
            "Status": status, "PaymentId": 13660, "ErrorCode": "0", "Amount": amount,
            "CardId": 322264, "Pan": "430000******0777", "ExpDate": "1130",
            "Data": { "Email": "tb@example.com", "product": "course" } });
        // Amount, CardId, ErrorCode, ExpDate, OrderId, Pan, Password, PaymentId, Status,
        // Success, TerminalKey: in the order of their names.
        let text =
            format!("{amount}3222640113021050430000******0777{SECRET}13660{status}true{terminal}");
        v["Token"] = hex(&sha2::Sha256::digest(text.as_bytes())).into();
        v.to_string()
    };
    for _ in 0..2 {
        assert_eq!(
            shop.post("tbank", &[], tb("CONFIRMED", 1_490_000, "TinkoffBankTest"))
                .await,
            (200, "OK".into())
        );
    }
    assert_eq!(
        shop.events("tb@example.com").await,
        [purchase(14900.0, "RUB")]
    );
    assert_eq!(
        shop.post("tbank", &[], tb("CONFIRMED", 1_490_000, "Other"))
            .await
            .0,
        401,
        "another terminal"
    );
    let forged = tb("CONFIRMED", 1_490_000, "TinkoffBankTest").replace("1490000", "100");
    assert_eq!(shop.post("tbank", &[], forged).await.0, 401);
    assert_eq!(
        shop.post("tbank", &[], tb("AUTHORIZED", 1_490_000, "TinkoffBankTest"))
            .await,
        (200, "OK".into())
    );
    assert_eq!(
        shop.post("tbank", &[], tb("REFUNDED", 1_490_000, "TinkoffBankTest"))
            .await,
        (200, "OK".into())
    );
    let kinds: Vec<String> = shop
        .events("tb@example.com")
        .await
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(kinds, ["purchase", "refund"]);

    // Stripe (docs.stripe.com/webhooks, "Verify webhook signatures manually"): v1 =
    // HMAC-SHA256(t.body); a checkout session of a Payment Link.
    let event = |id: &str, link: &str, currency: &str, amount: i64| {
        json!({ "id": id, "object": "event", "type": "checkout.session.completed", "created": 1764580000,
            "data": { "object": { "id": "cs_test_a1", "object": "checkout.session",
                "payment_intent": format!("pi_{id}"), "payment_link": link, "payment_status": "paid",
                "amount_total": amount, "currency": currency,
                "customer_details": { "email": "stripe@example.com" }, "metadata": {} } } })
        .to_string()
    };
    let signature = |t: i64, body: &str| {
        format!(
            "t={t},v1={}",
            hex(&hmac(SECRET, format!("{t}.{body}").as_bytes()))
        )
    };
    let now = chrono::Utc::now().timestamp();
    let good = event("evt_1", "plink_1Course", "rub", 1_490_000);
    for _ in 0..2 {
        let h = [("stripe-signature", signature(now, &good))];
        assert_eq!(
            shop.post("stripe", &h, good.clone()).await,
            (200, r#"{"received":true}"#.into())
        );
    }
    assert_eq!(
        shop.events("stripe@example.com").await,
        [purchase(14900.0, "RUB")]
    );
    let stale = [("stripe-signature", signature(now - 600, &good))];
    assert_eq!(
        shop.post("stripe", &stale, good.clone()).await.0,
        401,
        "a replay after the tolerance"
    );
    let h = [("stripe-signature", signature(now, &good))];
    assert_eq!(
        shop.post("stripe", &h, good.replace("1490000", "1"))
            .await
            .0,
        401
    );
    let jpy = event("evt_2", "plink_1Course", "jpy", 14900);
    let (status, text) = shop
        .post("stripe", &[("stripe-signature", signature(now, &jpy))], jpy)
        .await;
    assert_eq!(status, 422, "{text}");
    assert!(text.contains("payment is in JPY"), "{text}");

    // No such account; an account without its key.
    assert_eq!(shop.post("paypal", &[], "{}").await.0, 404);
    server.stop().await;
}

async fn without_key(store: Store) {
    store.migrate().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let rt = crate::util::engine(&store, &project(dir.path()), chrono::Utc::now()).await;
    let mut s = BTreeMap::new();
    s.insert(
        "cloudpayments".to_string(),
        PaymentSettings {
            secret_env: Some("UNSET_CP_SECRET".into()),
            ..Default::default()
        },
    );
    let accounts = payments::accounts(&s, &|_| None).unwrap();
    let (listener, base) = Server::bind().await;
    let server = Server::start(
        listener,
        AppState {
            payments: Payments::new(accounts),
            ..crate::util::off(&rt)
        },
    );
    let r = crate::util::http()
        .post(format!("{base}/hooks/pay/cloudpayments"))
        .body("TransactionId=1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.text().await.unwrap().contains("UNSET_CP_SECRET"));
    server.stop().await;
}

#[tokio::test]
async fn an_account_without_its_key_answers_503_so_the_provider_retries() {
    crate::store::on_sqlite(without_key).await;
}

on_both_backends! {
    providers => providers,
}
