//! What the ghost posts: Markdown rendered to sanitised HTML, replies and threads, streaming edits,
//! notices, and reasoning folded away in `<details>`.

use std::sync::LazyLock;

use ruma::events::relation::Thread;
use ruma::events::room::message::{
    AddMentions, ForwardThread, ReplacementMetadata, ReplyMetadata, ReplyWithinThread, RoomMessageEventContent,
};
use ruma::{OwnedEventId, OwnedUserId};

/// Where an answer goes: as a reply to the person's message, inside its thread, or plainly.
#[derive(Debug, Clone, Default)]
pub struct Placement {
    pub reply_to: Option<(OwnedEventId, OwnedUserId)>,
    /// The thread root and the latest event the person saw in it.
    pub thread: Option<(OwnedEventId, OwnedEventId)>,
}

/// The tags and attributes the Matrix spec suggests clients accept in `formatted_body`.
static SANITIZER: LazyLock<ammonia::Builder<'static>> = LazyLock::new(|| {
    let mut builder = ammonia::Builder::empty();
    builder
        .add_tags([
            "font",
            "del",
            "h1",
            "h2",
            "h3",
            "h4",
            "h5",
            "h6",
            "blockquote",
            "p",
            "a",
            "ul",
            "ol",
            "sup",
            "sub",
            "li",
            "b",
            "i",
            "u",
            "strong",
            "em",
            "s",
            "code",
            "hr",
            "br",
            "div",
            "table",
            "thead",
            "tbody",
            "tr",
            "th",
            "td",
            "caption",
            "pre",
            "span",
            "details",
            "summary",
        ])
        .add_tag_attributes("a", ["href"])
        .add_tag_attributes("ol", ["start"])
        .add_tag_attributes("code", ["class"])
        .url_schemes(["https", "http", "ftp", "mailto", "magnet", "matrix"].into())
        .link_rel(Some("noopener"));
    builder
});

/// Markdown to (plain body, HTML when the Markdown had any formatting).
pub fn render_markdown(text: &str) -> (String, Option<String>) {
    let mut options = pulldown_cmark::Options::empty();
    options.insert(pulldown_cmark::Options::ENABLE_STRIKETHROUGH);
    options.insert(pulldown_cmark::Options::ENABLE_TABLES);
    let parser = pulldown_cmark::Parser::new_ext(text, options);
    let mut html = String::new();
    pulldown_cmark::html::push_html(&mut html, parser);
    let html = SANITIZER.clean(html.trim_end()).to_string();
    // One plain paragraph is what every client shows for the body anyway.
    let plain_paragraph = html
        .strip_prefix("<p>")
        .and_then(|rest| rest.strip_suffix("</p>"))
        .is_some_and(|inner| !inner.contains('<') && !inner.contains('&'));
    if plain_paragraph || html.is_empty() {
        (text.to_owned(), None)
    } else {
        (text.to_owned(), Some(html))
    }
}

/// A message's content as JSON, for contents that carry keys of our own besides the spec's.
pub fn markdown_content(markdown: &str, msgtype: &str) -> serde_json::Value {
    let mut content = serde_json::json!({"msgtype": msgtype, "body": markdown});
    if let (_, Some(html)) = render_markdown(markdown) {
        content["format"] = serde_json::json!("org.matrix.custom.html");
        content["formatted_body"] = serde_json::json!(html);
    }
    content
}

pub fn text(markdown: &str) -> RoomMessageEventContent {
    match render_markdown(markdown) {
        (body, Some(html)) => RoomMessageEventContent::text_html(body, html),
        (body, None) => RoomMessageEventContent::text_plain(body),
    }
}

pub fn notice(markdown: &str) -> RoomMessageEventContent {
    match render_markdown(markdown) {
        (body, Some(html)) => RoomMessageEventContent::notice_html(body, html),
        (body, None) => RoomMessageEventContent::notice_plain(body),
    }
}

/// A notice whose details are folded away in clients that render `<details>`.
pub fn collapsed_notice(summary: &str, details: &str) -> RoomMessageEventContent {
    let body = format!("{summary}\n{details}");
    let html = format!(
        "<details><summary>{}</summary><pre><code>{}</code></pre></details>",
        escape(summary),
        escape(details)
    );
    RoomMessageEventContent::notice_html(body, html)
}

fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '&' => escaped.push_str("&amp;"),
            '"' => escaped.push_str("&quot;"),
            _ => escaped.push(c),
        }
    }
    escaped
}

/// Places a new message as the answer to the person's message.
pub fn place(content: RoomMessageEventContent, placement: &Placement) -> RoomMessageEventContent {
    match (&placement.thread, &placement.reply_to) {
        (Some((root, latest)), _) => {
            let thread = Thread::plain(root.clone(), latest.clone());
            let (event_id, sender) = placement
                .reply_to
                .clone()
                .expect("a thread answer knows the message it answers");
            content.make_for_thread(
                ReplyMetadata::new(&event_id, &sender, Some(&thread)),
                ReplyWithinThread::No,
                AddMentions::No,
            )
        }
        (None, Some((event_id, sender))) => content.make_reply_to(
            ReplyMetadata::new(event_id, sender, None),
            ForwardThread::No,
            AddMentions::Yes,
        ),
        (None, None) => content,
    }
}

/// An edit that replaces `original`'s text with `markdown`.
pub fn replacement(markdown: &str, original: OwnedEventId) -> RoomMessageEventContent {
    text(markdown).make_replacement(ReplacementMetadata::new(original, None))
}

/// Homeservers refuse events over 65,536 bytes, envelope and signatures included; an edit holds
/// the text four times (body and HTML, outside and inside `m.new_content`).
const MAX_CONTENT_BYTES: usize = 56_000;
/// The longest text of one message; a longer answer continues in the next one.
const PART_TEXT_BYTES: usize = 8_000;

/// Where an answer too long for one message should end, if it is: at the last paragraph break
/// (else line break, else space) within the longest prefix that may be one message (at most
/// `PART_TEXT_BYTES`, and whose final edit fits in an event). That prefix depends on the text up to
/// it alone, so an answer streamed in pieces and the same answer recovered whole after a crash are
/// cut at the same places, and a redone turn's parts match the ones it posted before.
pub fn overflow_cut(markdown: &str) -> Option<usize> {
    // Short text fits whatever its markup; longer text is rendered to be measured.
    if markdown.len() <= PART_TEXT_BYTES / 4 || (markdown.len() <= PART_TEXT_BYTES && fits(markdown)) {
        return None;
    }
    let mut longest = char_floor(markdown, PART_TEXT_BYTES);
    if !fits(&markdown[..longest]) {
        // The longest prefix that fits, by bisection: markup only grows with the text.
        let (mut good, mut bad) = (0, longest);
        loop {
            let middle = char_floor(markdown, good + (bad - good) / 2);
            if middle <= good {
                break;
            }
            if fits(&markdown[..middle]) {
                good = middle;
            } else {
                bad = middle;
            }
        }
        longest = good;
    }
    Some(break_before(markdown, longest))
}

/// The largest character boundary at or before `at`.
fn char_floor(text: &str, at: usize) -> usize {
    let mut at = at.min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

/// `markdown` as messages that each fit in an event, cut where [`overflow_cut`] cuts.
pub fn split_for_events(markdown: &str) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut rest = markdown;
    while let Some(cut) = overflow_cut(rest) {
        pieces.push(&rest[..cut]);
        rest = rest[cut..].trim_start();
    }
    if !rest.is_empty() || pieces.is_empty() {
        pieces.push(rest);
    }
    pieces
}

fn fits(markdown: &str) -> bool {
    let original = OwnedEventId::try_from("$size-check").expect("a valid event id");
    serde_json::to_vec(&replacement(markdown, original)).is_ok_and(|json| json.len() <= MAX_CONTENT_BYTES)
}

/// The end of the last paragraph, line or word that ends at or before `limit` (a character boundary
/// when the text has none of them), and never at the very start.
fn break_before(text: &str, limit: usize) -> usize {
    let limit = char_floor(text, limit);
    let head = &text[..limit];
    ["\n\n", "\n", " "]
        .iter()
        .find_map(|separator| head.rfind(separator).filter(|&at| at > limit / 2))
        .unwrap_or(limit)
        .max(head.chars().next().map_or(0, char::len_utf8))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_becomes_sanitised_html_and_plain_text_stays_plain() {
        assert_eq!(render_markdown("just words"), ("just words".into(), None));
        let (_, html) = render_markdown("Hello **Alice**, see [docs](https://x.org)");
        assert_eq!(
            html.unwrap(),
            "<p>Hello <strong>Alice</strong>, see <a href=\"https://x.org\" rel=\"noopener\">docs</a></p>"
        );
        let (_, html) = render_markdown("*hi* <script>alert(1)</script> <img src=x onerror=y>");
        let html = html.unwrap();
        assert!(
            !html.contains("script") && !html.contains("onerror") && !html.contains("<img"),
            "{html}"
        );
        assert!(html.contains("<em>hi</em>"));
        let (_, html) = render_markdown("```rust\nfn main() {}\n```");
        assert!(html.unwrap().contains("<code class=\"language-rust\">"));
    }

    #[test]
    fn an_edit_carries_the_new_content_and_points_at_the_original() {
        let original: OwnedEventId = "$orig".try_into().unwrap();
        let edit = serde_json::to_value(replacement("**done**", original)).unwrap();
        assert_eq!(edit["m.relates_to"]["rel_type"], "m.replace");
        assert_eq!(edit["m.relates_to"]["event_id"], "$orig");
        assert_eq!(edit["m.new_content"]["body"], "**done**");
        assert_eq!(edit["m.new_content"]["formatted_body"], "<p><strong>done</strong></p>");
    }

    #[test]
    fn answers_reply_or_stay_in_their_thread() {
        let person: OwnedUserId = "@alice:x".try_into().unwrap();
        let asked: OwnedEventId = "$asked".try_into().unwrap();
        let reply = serde_json::to_value(place(
            text("hi"),
            &Placement {
                reply_to: Some((asked.clone(), person.clone())),
                thread: None,
            },
        ))
        .unwrap();
        assert_eq!(reply["m.relates_to"]["m.in_reply_to"]["event_id"], "$asked");
        let threaded = serde_json::to_value(place(
            text("hi"),
            &Placement {
                reply_to: Some((asked, person)),
                thread: Some(("$root".try_into().unwrap(), "$latest".try_into().unwrap())),
            },
        ))
        .unwrap();
        assert_eq!(threaded["m.relates_to"]["rel_type"], "m.thread");
        assert_eq!(threaded["m.relates_to"]["event_id"], "$root");
    }

    #[test]
    fn long_answers_are_cut_at_paragraphs_into_messages_that_fit() {
        assert_eq!(overflow_cut("short"), None);
        let paragraph = "word ".repeat(200);
        let long = [paragraph.trim(); 12].join("\n\n");
        let cut = overflow_cut(&long).expect("12 paragraphs of 1 KB are too long for one message");
        assert!(cut <= PART_TEXT_BYTES);
        assert_eq!(&long[cut..cut + 2], "\n\n", "cut at a paragraph break");
        assert!(fits(&long[..cut]));
        assert_eq!(
            overflow_cut(&long),
            Some(cut),
            "the same text is always cut at the same place"
        );
        for streamed in [8_001, 9_000, long.len()] {
            assert_eq!(
                overflow_cut(&long[..streamed]),
                Some(cut),
                "cut where the whole text is cut, however much of it has arrived ({streamed} bytes)"
            );
        }

        // Text that turns into far more HTML (escaped characters) is cut shorter.
        let escaped = "<&> ".repeat(2_000);
        let cut = overflow_cut(&escaped).expect("too long");
        assert!(fits(&escaped[..cut]) && cut < escaped.len());
        // The shortest prefix that needs a cut, as streaming first meets it (needing one only
        // grows with the text, so bisection finds it).
        let (mut fitting, mut first_too_long) = (0, escaped.len());
        while first_too_long - fitting > 1 {
            let middle = (fitting + first_too_long) / 2;
            match overflow_cut(&escaped[..middle]) {
                Some(_) => first_too_long = middle,
                None => fitting = middle,
            }
        }
        for streamed in [first_too_long, first_too_long + 100] {
            assert_eq!(
                overflow_cut(&escaped[..streamed]),
                Some(cut),
                "streamed ({streamed} bytes), it is cut where it is cut whole"
            );
        }

        assert_eq!(
            split_for_events(&long).concat().len() + 2 * (split_for_events(&long).len() - 1),
            long.len()
        );
        assert_eq!(split_for_events("short"), ["short"]);

        // No breaks at all: cut at a character boundary.
        let unbroken = "é".repeat(5_000);
        let cut = overflow_cut(&unbroken).expect("too long");
        assert!(unbroken.is_char_boundary(cut) && cut <= PART_TEXT_BYTES);
    }

    #[test]
    fn reasoning_is_folded_and_escaped() {
        let notice = serde_json::to_value(collapsed_notice("Reasoning", "a < b")).unwrap();
        assert_eq!(notice["msgtype"], "m.notice");
        assert_eq!(
            notice["formatted_body"],
            "<details><summary>Reasoning</summary><pre><code>a &lt; b</code></pre></details>"
        );
    }
}
