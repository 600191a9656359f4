//! The show a run puts on sale, and how users pick seats from it.
//!
//! Seats are numbered from the stage: seat 1 is in the front row. Most
//! people want the front, so the front rows are where holds collide, which
//! is exactly the contention a hold strategy must survive.

use rand::rngs::StdRng;
use rand::Rng as _;
use serde_json::{json, Value};

/// The grades of a show with `seats` seats: a tenth VIP at the front, three
/// tenths R, the rest S. Prices in won.
pub fn grades(seats: i64) -> Value {
    let vip = (seats / 10).max(1).min(seats);
    let r = (seats * 3 / 10).min(seats - vip);
    let s = seats - vip - r;
    let mut list = vec![json!({ "grade": "vip", "price": 150_000, "seats": vip })];
    if r > 0 {
        list.push(json!({ "grade": "r", "price": 120_000, "seats": r }));
    }
    if s > 0 {
        list.push(json!({ "grade": "s", "price": 90_000, "seats": s }));
    }
    Value::Array(list)
}

/// How many seats one user wants: 1 to 4, pairs most often.
pub fn how_many(rng: &mut StdRng) -> usize {
    match rng.random_range(0..100) {
        0..20 => 1,
        20..65 => 2,
        65..80 => 3,
        _ => 4,
    }
}

/// Picks up to `want` seats from `available` (in seat order, front first):
/// a spot drawn with a strong pull to the front (the cube of a uniform
/// number), then the seats next to it on the list.
pub fn choose(available: &[(i32, i64)], want: usize, rng: &mut StdRng) -> Vec<i32> {
    if available.is_empty() || want == 0 {
        return Vec::new();
    }
    let want = want.min(available.len());
    let u: f64 = rng.random();
    let spot = ((u * u * u) * available.len() as f64) as usize;
    let first = spot.min(available.len() - want);
    available[first..first + want]
        .iter()
        .map(|(seat, _)| *seat)
        .collect()
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng as _;

    use super::*;

    #[test]
    fn grades_add_up_to_the_seats_asked_for() {
        for seats in [1, 7, 100, 1000] {
            let total: i64 = grades(seats)
                .as_array()
                .unwrap()
                .iter()
                .map(|g| g["seats"].as_i64().unwrap())
                .sum();
            assert_eq!(total, seats);
        }
    }

    #[test]
    fn most_choices_are_near_the_front_and_never_repeat_a_seat() {
        let available: Vec<(i32, i64)> = (1..=1000).map(|s| (s, 1)).collect();
        let mut rng = StdRng::seed_from_u64(7);
        let mut front = 0;
        for _ in 0..1000 {
            let chosen = choose(&available, how_many(&mut rng), &mut rng);
            assert!((1..=4).contains(&chosen.len()));
            let mut unique = chosen.clone();
            unique.dedup();
            assert_eq!(unique, chosen);
            if chosen[0] <= 250 {
                front += 1;
            }
        }
        assert!(front > 500, "{front} of 1000 chose the front quarter");
    }
}
