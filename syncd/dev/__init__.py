"""Development tools, not the product: stand-ins of Nat and User.com (tests, the demo,
bench/) and the demo `make demo` runs."""
