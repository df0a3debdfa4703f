//! The funnel map: the checked funnel drawn as a diagram — a box per stage (its kind, offer,
//! deadline and the leads in it now), an arrow per way on (a step's `goto` after its waits, an
//! event's transition), each exit a way out — and the same as a table. Made from the parsed
//! `Funnel`, so it always matches the file. Pure.

use crate::funnel::{Action, Funnel, Target, print};
use crate::locale::{self, Language};

/// Where a way on leads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum To {
    Stage(String),
    Exit(String),
}

/// One way on from a stage (`from` empty: from any stage, the funnel's own `on`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edge {
    pub from: String,
    pub to: To,
    /// When it is taken: `after 1d`, `until deadline - 6h, then after 1d`,
    /// `on purchase product=course`, `if …`.
    pub when: String,
}

/// A compact text of a transition's match: `purchase product=course`.
fn matched(t: &crate::funnel::Transition) -> String {
    let v = print::transition(t);
    let mut parts = Vec::new();
    if let Some(m) = v.as_object() {
        if let Some(e) = m.get("event").and_then(|e| e.as_str()) {
            parts.push(e.to_string());
        }
        for (k, x) in m {
            if ["event", "goto", "exit", "if"].contains(&k.as_str()) {
                continue;
            }
            let x = x.as_str().map_or_else(|| x.to_string(), str::to_string);
            parts.push(format!("{k}={x}"));
        }
        if let Some(g) = m.get("if") {
            parts.push(format!("if {g}"));
        }
    }
    parts.join(" ")
}

/// Every way on of the funnel: each stage's steps that leave it (with the waits before them),
/// its event transitions, and the funnel's own transitions from any stage.
pub fn edges(f: &Funnel) -> Vec<Edge> {
    let mut out = Vec::new();
    for s in &f.stages {
        let from = s.id.value.to_string();
        let mut waits: Vec<String> = Vec::new();
        for step in &s.steps {
            let guard = step
                .guard
                .as_ref()
                .map(|g| format!("if {}", print::condition(g)));
            let to = match &step.action {
                Action::Wait(d) => {
                    waits.push(format!("after {d}"));
                    None
                }
                Action::WaitUntil(w) => {
                    waits.push(format!("until {}", print::wait_until(w)));
                    None
                }
                Action::Goto(t) => Some(To::Stage(t.value.to_string())),
                Action::Exit(o) => Some(To::Exit(o.name().to_string())),
                _ => None,
            };
            if let Some(to) = to {
                let mut when: Vec<String> = Vec::new();
                if !waits.is_empty() {
                    when.push(waits.join(", then "));
                }
                when.extend(guard.clone());
                out.push(Edge {
                    from: from.clone(),
                    to,
                    when: if when.is_empty() {
                        "at once".into()
                    } else {
                        when.join(" ")
                    },
                });
                // An unconditional step that leaves ends the stage's path.
                if step.guard.is_none() {
                    break;
                }
            }
        }
        for t in &s.on {
            out.push(Edge {
                from: from.clone(),
                to: target(&t.target),
                when: format!("on {}", matched(t)),
            });
        }
    }
    for t in &f.on {
        out.push(Edge {
            from: String::new(),
            to: target(&t.target),
            when: format!("on {}", matched(t)),
        });
    }
    out
}

fn target(t: &Target) -> To {
    match t {
        Target::Goto(s) => To::Stage(s.value.to_string()),
        Target::Exit(o) => To::Exit(o.name().to_string()),
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The diagram: stages top to bottom in the file's order, each box with its kind, offer,
/// deadline and `in_stage` leads now; arrows to a later stage on the right, back to an earlier
/// one on the left, each labelled with when it is taken; exits listed beside their stage.
pub fn svg(f: &Funnel, in_stage: &[(String, u64)], lang: Language, title: &str) -> String {
    const BOX_X: i64 = 250;
    const BOX_W: i64 = 300;
    const BOX_H: i64 = 84;
    const GAP: i64 = 70;
    let all = edges(f);
    let index = |id: &str| f.stages.iter().position(|s| s.id.value.as_str() == id);
    let top = |i: usize| 20 + (BOX_H + GAP) * i as i64;
    let height = top(f.stages.len()) + 10;
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 1000 {height}\" width=\"100%\" role=\"img\" \
         aria-label=\"{t}\" font-family=\"Helvetica, Arial, sans-serif\" font-size=\"13\"><title>{t}</title>\
         <defs><marker id=\"arrow\" viewBox=\"0 0 10 10\" refX=\"9\" refY=\"5\" markerWidth=\"7\" markerHeight=\"7\" orient=\"auto-start-reverse\">\
         <path d=\"M0,0 L10,5 L0,10 z\" fill=\"#57606a\"/></marker></defs>",
        t = esc(title)
    );
    for (i, s) in f.stages.iter().enumerate() {
        let y = top(i);
        let id = s.id.value.as_str();
        let leads = in_stage
            .iter()
            .find(|(x, _)| x == id)
            .map_or(0, |(_, n)| *n);
        let mut lines = vec![s.kind.map_or("stage", |k| k.name()).to_string()];
        if let Some(o) = &s.offer {
            let priced = f
                .products
                .get(&o.value)
                .map(|p| locale::money(p.price, &p.currency, lang));
            lines.push(match priced {
                Some(p) => format!("offer {} · {p}", o.value),
                None => format!("offer {}", o.value),
            });
        }
        if let Some(d) = s.deadline {
            lines.push(format!("deadline {d}"));
        }
        out.push_str(&format!(
            "<g data-stage=\"{}\"><rect x=\"{BOX_X}\" y=\"{y}\" width=\"{BOX_W}\" height=\"{BOX_H}\" rx=\"6\" fill=\"#ffffff\" stroke=\"#0b6bcb\" stroke-width=\"2\"/>\
             <text x=\"{}\" y=\"{}\" font-weight=\"bold\" font-size=\"15\">{}</text>\
             <text x=\"{}\" y=\"{}\" text-anchor=\"end\" font-weight=\"bold\" fill=\"#0b6bcb\" data-figure=\"in-stage\">{}</text>",
            esc(id),
            BOX_X + 12,
            y + 22,
            esc(id),
            BOX_X + BOX_W - 12,
            y + 22,
            esc(&locale::count(leads, lang)),
        ));
        for (k, line) in lines.iter().enumerate() {
            out.push_str(&format!(
                "<text x=\"{}\" y=\"{}\" fill=\"#57606a\">{}</text>",
                BOX_X + 12,
                y + 42 + 16 * k as i64,
                esc(line)
            ));
        }
        out.push_str("</g>");
        // Exits beside the stage.
        let exits: Vec<&Edge> = all
            .iter()
            .filter(|e| e.from == id && matches!(e.to, To::Exit(_)))
            .collect();
        for (k, e) in exits.iter().enumerate() {
            let To::Exit(o) = &e.to else { continue };
            let ey = y + 16 + 18 * k as i64;
            out.push_str(&format!(
                "<line x1=\"{}\" y1=\"{ey}\" x2=\"{}\" y2=\"{ey}\" stroke=\"#57606a\" marker-end=\"url(#arrow)\"/>\
                 <text x=\"{}\" y=\"{}\" fill=\"#1f2328\">exit {} <tspan fill=\"#57606a\">{}</tspan></text>",
                BOX_X + BOX_W,
                BOX_X + BOX_W + 30,
                BOX_X + BOX_W + 36,
                ey + 4,
                esc(o),
                esc(&e.when)
            ));
        }
    }
    // Ways between stages: to the next one down the gap, others in lanes on either side.
    let (mut right, mut left) = (0i64, 0i64);
    for e in all.iter().filter(|e| !e.from.is_empty()) {
        let (Some(a), To::Stage(t)) = (index(&e.from), &e.to) else {
            continue;
        };
        let Some(b) = index(t) else { continue };
        if b == a + 1 {
            let x = BOX_X + 40 + 70 * right.min(3);
            out.push_str(&format!(
                "<line x1=\"{x}\" y1=\"{}\" x2=\"{x}\" y2=\"{}\" stroke=\"#57606a\" marker-end=\"url(#arrow)\"/>\
                 <text x=\"{}\" y=\"{}\" fill=\"#57606a\" font-size=\"12\">{}</text>",
                top(a) + BOX_H,
                top(b) - 2,
                x + 6,
                top(a) + BOX_H + GAP / 2 + 4,
                esc(&e.when)
            ));
            right += 1;
            continue;
        }
        let forward = b > a;
        let lane = if forward { &mut right } else { &mut left };
        *lane += 1;
        let (edge_x, dir) = if forward {
            (BOX_X + BOX_W, 1)
        } else {
            (BOX_X, -1)
        };
        let x = edge_x + dir * (200 + 26 * (*lane % 6));
        let (y1, y2) = (top(a) + BOX_H - 14, top(b) + 14);
        out.push_str(&format!(
            "<path d=\"M{edge_x},{y1} C{x},{y1} {x},{y2} {edge_x},{y2}\" fill=\"none\" stroke=\"#57606a\" stroke-dasharray=\"{}\" marker-end=\"url(#arrow)\"/>\
             <text x=\"{}\" y=\"{}\" text-anchor=\"{}\" fill=\"#57606a\" font-size=\"12\">{}</text>",
            if e.when.starts_with("on ") { "5,3" } else { "none" },
            x - dir * 60,
            (y1 + y2) / 2,
            if forward { "start" } else { "end" },
            esc(&e.when)
        ));
    }
    out.push_str("</svg>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ways_on_of_a_funnel_are_its_steps_and_transitions() {
        let yaml = r#"name: M
from: "S <s@example.com>"
entry: { api: true }
on: [{ event: unsubscribed, exit: unsubscribed }]
products:
  course: { price: 100, currency: EUR }
stages:
  - id: a
    steps:
      - send: hello
      - wait: 1d
      - goto: b
  - id: b
    offer: course
    deadline: 3d
    on: [{ event: purchase, product: course, goto: c }]
    steps:
      - wait: 3d
      - exit: not_converted
  - id: c
    steps:
      - exit: converted
"#;
        let path = std::path::Path::new("funnels/m.yaml");
        let mut sink = crate::funnel::Sink::new(path);
        let f = crate::funnel::parse_text(path, yaml, &mut sink).unwrap();
        let got: Vec<(String, To, String)> = edges(&f)
            .into_iter()
            .map(|e| (e.from, e.to, e.when))
            .collect();
        let stage = |s: &str| To::Stage(s.into());
        let exit = |s: &str| To::Exit(s.into());
        assert_eq!(
            got,
            [
                ("a".into(), stage("b"), "after 1d".into()),
                ("b".into(), exit("not_converted"), "after 3d".into()),
                ("b".into(), stage("c"), "on purchase product=course".into()),
                ("c".into(), exit("converted"), "at once".into()),
                ("".into(), exit("unsubscribed"), "on unsubscribed".into()),
            ]
        );
        let svg = svg(&f, &[("b".into(), 12)], Language::En, "map");
        assert!(
            svg.contains("offer course · €100") && svg.contains("deadline 3d"),
            "{svg}"
        );
        assert!(svg.contains("data-figure=\"in-stage\">12<"), "{svg}");
    }
}
