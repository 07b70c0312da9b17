"""Local HTTP servers standing in for the social platforms: each enforces its platform's
published request shapes and limits, answers with the platform's real error shapes, and fails
on demand."""
