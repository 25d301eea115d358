"""jailfarm.poudriere: poudriere commands and configs, status parsing, the dev-host bulk
builder, pkg packages and repositories."""
