use super::*;
use crate::controller::status::truncate;
use k8s_openapi::jiff::Timestamp;

fn at(seconds: i64) -> Timestamp {
    Timestamp::from_second(seconds).expect("a valid timestamp")
}

#[test]
fn the_update_server_is_asked_for_devices_at_most_hourly_per_app() {
    let asked = DevicesAsked::default();
    assert!(asked.take_if_due("uid-a", at(0)));
    assert!(!asked.take_if_due("uid-a", at(600)), "10 minutes later");
    assert!(asked.take_if_due("uid-b", at(600)), "another App");
    assert!(!asked.take_if_due("uid-a", at(3599)));
    assert!(asked.take_if_due("uid-a", at(3600)), "an hour later");
}

#[test]
fn notes_are_cut_at_a_character_boundary() {
    let text = "é".repeat(600);
    let cut = truncate(text, 1023);
    assert!(cut.len() <= 1023 && cut.is_char_boundary(cut.len()));
    assert_eq!(truncate("short".to_owned(), 1024), "short");
}
