#!/bin/sh
# jf-cowsay: the greeting of jf-hello, said by a cow.
# JF_HELLO overrides the program (the default is the installed one).
msg=$("${JF_HELLO:-%%PREFIX%%/bin/jf-hello}" "$@") || exit 1
line=$(printf '%s' "$msg" | sed 's/./-/g')
printf ' %s\n< %s >\n %s\n' "$line" "$msg" "$line"
cat <<'COW'
        \   ^__^
         \  (oo)\_______
            (__)\       )\/\
                ||----w |
                ||     ||
COW
