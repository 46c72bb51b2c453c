"""Distributed collection (issue 17): jobs on procrastinate, budgets per IP and shared ones."""
