"""Reading results for people: invariant checks, claim metrics and figures."""
