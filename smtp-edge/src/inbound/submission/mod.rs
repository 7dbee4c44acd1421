//! Submission for devices and apps (RFC 6409, RFC 8314): SMTP AUTH on port
//! 587 after STARTTLS and on port 465 with implicit TLS, against device
//! accounts kept in the state directory, with brute-force and rate guards.
//! The SASL exchange itself is [`crate::smtp::sasl`].

pub mod devices;
pub mod guard;
pub mod send_as;
