//! Prints a parsed funnel back as canonical YAML: every default spelled out, keys sorted.
//! Parsing the printed text gives the same funnel, which the round-trip tests rely on, and the
//! printed form shows exactly what `check` understood.

use serde_json::{Map, Value, json};

use super::model::*;

/// The canonical YAML text of `f`.
pub fn to_yaml(f: &Funnel) -> String {
    serde_saphyr::to_string(&to_value(f)).unwrap_or_else(|e| format!("# cannot print: {e}\n"))
}

/// The funnel as a JSON-like tree, in the shape the language is written in.
pub fn to_value(f: &Funnel) -> Value {
    let mut m = Map::new();
    m.insert("id".into(), json!(f.id.value.as_str()));
    m.insert("name".into(), json!(f.name));
    if let Some(from) = &f.from {
        m.insert("from".into(), json!(from.to_string()));
    }
    if let Some(r) = &f.reply_to {
        m.insert("reply_to".into(), json!(r.to_string()));
    }
    if let Some(a) = &f.postal_address {
        m.insert("postal_address".into(), json!(a));
    }
    if let Some(u) = &f.expired_offer {
        m.insert("expired_offer".into(), json!(u.value));
    }
    m.insert("timezone".into(), json!(f.timezone.name()));
    if f.language != crate::locale::Language::default() {
        m.insert("language".into(), json!(f.language.code()));
    }
    if let Some(w) = &f.send_window {
        m.insert("send_window".into(), json!(w.value.source()));
    }
    if let Some(c) = &f.frequency_cap {
        m.insert("frequency_cap".into(), json!(c.to_string()));
    }
    m.insert("entry".into(), entry(&f.entry));
    if !f.products.is_empty() {
        let p: Map<String, Value> = f
            .products
            .values()
            .map(|p| {
                let mut o = Map::new();
                if let Some(n) = &p.name {
                    o.insert("name".into(), json!(n));
                }
                o.insert("price".into(), json!(p.price));
                o.insert("currency".into(), json!(p.currency));
                (p.id.to_string(), Value::Object(o))
            })
            .collect();
        m.insert("products".into(), Value::Object(p));
    }
    if !f.fields.is_empty() {
        let fl: Map<String, Value> = f
            .fields
            .values()
            .map(|d| {
                (
                    d.name.to_string(),
                    json!({ "type": d.kind.name(), "sample": d.sample }),
                )
            })
            .collect();
        m.insert("fields".into(), Value::Object(fl));
    }
    if !f.webhooks.is_empty() {
        let w: Map<String, Value> = f
            .webhooks
            .values()
            .map(|w| {
                let mut o = Map::new();
                o.insert("url".into(), json!(w.url));
                if let Some(s) = &w.secret_env {
                    o.insert("secret_env".into(), json!(s));
                }
                (w.id.to_string(), Value::Object(o))
            })
            .collect();
        m.insert("webhooks".into(), Value::Object(w));
    }
    if let Some(s) = &f.scoring {
        let mut o = Map::new();
        let rules: Vec<Value> = s
            .rules
            .iter()
            .map(|r| {
                let mut rm = event(&r.on);
                rm.insert("points".into(), json!(r.points));
                Value::Object(rm)
            })
            .collect();
        o.insert("rules".into(), Value::Array(rules));
        if let Some(d) = &s.decay {
            o.insert(
                "decay".into(),
                json!({ "points": d.points, "every": d.every.to_string() }),
            );
        }
        if let Some(v) = s.mql {
            o.insert("mql".into(), json!(v));
        }
        if let Some(v) = s.sql {
            o.insert("sql".into(), json!(v));
        }
        m.insert("scoring".into(), Value::Object(o));
    }
    if !f.on.is_empty() {
        m.insert(
            "on".into(),
            Value::Array(f.on.iter().map(transition).collect()),
        );
    }
    m.insert(
        "stages".into(),
        Value::Array(f.stages.iter().map(stage).collect()),
    );
    Value::Object(m)
}

fn entry(e: &Entry) -> Value {
    let mut m = Map::new();
    let mut forms = Vec::new();
    let mut events = Vec::new();
    let mut tags = Vec::new();
    for t in &e.triggers {
        match &t.value {
            EntryTrigger::Form(f) => {
                let mut o = Map::new();
                o.insert("id".into(), json!(f.id.as_str()));
                if let Some(t) = &f.thank_you {
                    o.insert("thank_you".into(), json!(t));
                }
                if !f.cors.is_empty() {
                    o.insert("cors".into(), json!(f.cors));
                }
                if let Some(c) = &f.consent {
                    o.insert("consent".into(), json!(c.path));
                }
                forms.push(Value::Object(o));
            }
            EntryTrigger::Event(n) => events.push(json!(n.as_str())),
            EntryTrigger::Tag(t) => tags.push(json!(t.as_str())),
            EntryTrigger::Api => {
                m.insert("api".into(), json!(true));
            }
        }
    }
    for (key, list) in [("form", forms), ("event", events), ("tag", tags)] {
        if !list.is_empty() {
            m.insert(key.into(), Value::Array(list));
        }
    }
    if let Some(t) = &e.double_opt_in {
        m.insert("double_opt_in".into(), json!(t.value.as_str()));
    }
    let re = match e.re_entry {
        ReEntry::Never => "never".to_string(),
        ReEntry::Always => "always".to_string(),
        ReEntry::After(d) => format!("after {d}"),
    };
    m.insert("re_entry".into(), json!(re));
    Value::Object(m)
}

fn stage(s: &Stage) -> Value {
    let mut m = Map::new();
    m.insert("id".into(), json!(s.id.value.as_str()));
    if let Some(k) = s.kind {
        m.insert("kind".into(), json!(k.name()));
    }
    if let Some(o) = &s.offer {
        m.insert("offer".into(), json!(o.value.as_str()));
    }
    if let Some(d) = s.deadline {
        m.insert("deadline".into(), json!(d.to_string()));
    }
    if !s.on.is_empty() {
        m.insert(
            "on".into(),
            Value::Array(s.on.iter().map(transition).collect()),
        );
    }
    m.insert(
        "steps".into(),
        Value::Array(s.steps.iter().map(step).collect()),
    );
    Value::Object(m)
}

fn step(s: &Step) -> Value {
    let mut m = Map::new();
    m.insert("id".into(), json!(s.id.as_str()));
    if let Some(g) = &s.guard {
        m.insert("if".into(), condition(g));
    }
    if s.urgent {
        m.insert("urgent".into(), json!(true));
    }
    if let Some(p) = s.if_past {
        m.insert("if_past".into(), json!(p.name()));
    }
    let v = match &s.action {
        Action::Send(Send::Template(t)) => json!(t.value.as_str()),
        Action::Send(Send::Split(ts)) => {
            json!({ "split": ts.iter().map(|t| t.value.as_str()).collect::<Vec<_>>() })
        }
        Action::Wait(d) => json!(d.to_string()),
        Action::WaitUntil(w) => json!(wait_until(w)),
        Action::Goto(s) => json!(s.value.as_str()),
        Action::Exit(o) => json!(o.name()),
        Action::Tag(ts) | Action::Untag(ts) => {
            json!(ts.iter().map(|t| t.as_str()).collect::<Vec<_>>())
        }
        Action::Set(pairs) => Value::Object(
            pairs
                .iter()
                .map(|(f, v)| (f.value.to_string(), v.clone()))
                .collect(),
        ),
        Action::Score(n) => json!(n),
        Action::Webhook(w) => json!(w.value.as_str()),
        Action::AssignSession(session) => json!({
            "schedule": session.schedule.source(),
            "min_lead_time": session.min_lead_time.to_string(),
            "field": session.field.value.as_str(),
        }),
    };
    m.insert(s.action.keyword().into(), v);
    Value::Object(m)
}

fn offset(secs: i64) -> String {
    let d = super::time::Duration::from_secs(secs.unsigned_abs());
    match secs {
        0 => String::new(),
        s if s < 0 => format!(" - {d}"),
        _ => format!(" + {d}"),
    }
}

/// A `wait_until` as it is written in a funnel.
pub fn wait_until(w: &WaitUntil) -> String {
    match w {
        WaitUntil::Cron(c) => c.source().to_string(),
        WaitUntil::Deadline { offset_secs } => format!("deadline{}", offset(*offset_secs)),
        WaitUntil::Field { field, offset_secs } => {
            format!("lead.{}{}", field.value, offset(*offset_secs))
        }
        WaitUntil::At(t) => t.to_rfc3339(),
        WaitUntil::Local(t) => t.format("%Y-%m-%d %H:%M").to_string(),
    }
}

/// A transition as it is written in a funnel (`{event: purchase, product: course, goto: won}`).
pub fn transition(t: &Transition) -> Value {
    let mut m = event(&t.on);
    if let Some(g) = &t.guard {
        m.insert("if".into(), condition(g));
    }
    match &t.target {
        Target::Goto(s) => m.insert("goto".into(), json!(s.value.as_str())),
        Target::Exit(o) => m.insert("exit".into(), json!(o.name())),
    };
    Value::Object(m)
}

fn event(e: &EventMatch) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("event".into(), json!(e.event.name()));
    match &e.event {
        EventPattern::Purchase { product: Some(p) } => {
            m.insert("product".into(), json!(p.value.as_str()));
        }
        EventPattern::Click { template, link } => {
            if let Some(t) = template {
                m.insert("template".into(), json!(t.value.as_str()));
            }
            if let Some(l) = link {
                m.insert("link".into(), json!(l));
            }
        }
        EventPattern::Open { template: Some(t) } => {
            m.insert("template".into(), json!(t.value.as_str()));
        }
        EventPattern::Signup { form: Some(f) } => {
            m.insert("form".into(), json!(f.value.as_str()));
        }
        _ => {}
    }
    m
}

/// A condition as it is written in a funnel.
pub fn condition(c: &Condition) -> Value {
    let op_name = |op: CompareOp| {
        CompareOp::ALL
            .iter()
            .find(|(_, o)| *o == op)
            .map(|(n, _)| *n)
            .unwrap_or("eq")
    };
    match c {
        Condition::Clicked {
            template,
            link: None,
        } => json!({ "clicked": template.value.as_str() }),
        Condition::Clicked {
            template,
            link: Some(l),
        } => {
            json!({ "clicked": { "template": template.value.as_str(), "link": l } })
        }
        Condition::Opened(t) => json!({ "opened": t.value.as_str() }),
        Condition::HasTag(t) => json!({ "tag": t.as_str() }),
        Condition::Purchased(p) => json!({ "purchased": p.value.as_str() }),
        Condition::Field { field, op, value } => {
            let mut m = Map::new();
            m.insert("field".into(), json!(field.value.as_str()));
            m.insert(op_name(*op).into(), value.clone());
            Value::Object(m)
        }
        Condition::Score { op, value } => {
            let mut inner = Map::new();
            inner.insert(op_name(*op).into(), json!(value));
            json!({ "score": inner })
        }
        Condition::Not(inner) => json!({ "not": condition(inner) }),
        Condition::All(cs) => json!({ "all": cs.iter().map(condition).collect::<Vec<_>>() }),
        Condition::Any(cs) => json!({ "any": cs.iter().map(condition).collect::<Vec<_>>() }),
    }
}
