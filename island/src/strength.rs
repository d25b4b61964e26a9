//! A rough password strength hint: length and variety. It only guides;
//! the server cannot check the password, which it never sees.

/// 0 (very weak) to 4 (strong).
pub fn score(password: &str) -> u8 {
    let len = password.chars().count();
    let classes = [
        password.chars().any(|c| c.is_lowercase()),
        password.chars().any(|c| c.is_uppercase()),
        password.chars().any(|c| c.is_ascii_digit()),
        password.chars().any(|c| !c.is_alphanumeric()),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    let distinct = {
        let mut v: Vec<char> = password.chars().collect();
        v.sort_unstable();
        v.dedup();
        v.len()
    };
    if len < 10 || distinct < 5 {
        return if len < 6 { 0 } else { 1 };
    }
    match (len, classes) {
        (20.., _) => 4,
        (14.., 2..) => 4,
        (14.., _) => 3,
        (_, 3..) => 3,
        _ => 2,
    }
}

#[cfg(test)]
mod tests {
    use super::score;

    #[test]
    fn longer_and_more_varied_scores_higher() {
        assert_eq!(score("abc"), 0);
        assert_eq!(score("aaaaaaaaaaaa"), 1);
        assert_eq!(score("secretword"), 2);
        assert_eq!(score("Secret-word9"), 3);
        assert_eq!(score("la carta elegida es el siete"), 4);
    }
}
