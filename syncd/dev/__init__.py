"""Development tools, not the product: stand-ins of Nat, User.com and Segment (tests, the demo,
bench/) and the demo `make demo` runs."""
