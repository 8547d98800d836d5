# Sourced by the set-up scripts: what an install of pinned tools makes (a venv, an npm
# prefix, uv's environments) is kept once per machine under a key of its pins, as uv's and
# npm's own caches keep what they download, and each checkout links it: a fresh clone of
# the same pins spends no CPU making it again (decision 1001). CORRAL_KEPT moves the store.
CORRAL_KEPT=${CORRAL_KEPT:-${XDG_CACHE_HOME:-$HOME/.cache}/corral}

kept() {  # kept LINK KEY MAKER [ARG...]: `MAKER DIR ARG...` makes DIR, LINK links to it
    _kept_link=$1
    _kept_dir="$CORRAL_KEPT/${_kept_link#.}-$(printf '%s\n' "$2" | sha256sum | cut -c1-16)"
    shift 2
    mkdir -p "$CORRAL_KEPT" || return 1
    # one maker per key (two clones set up at once): the other waits, then finds it made;
    # marked made only once its builder succeeded, a failed make leaves nothing behind
    (
        flock -n 9 || {
            echo "corral: ${_kept_link#.}: another set-up is making it; waiting for it…" >&2
            flock 9
        }
        if [ ! -e "$_kept_dir/.corral-kept" ]; then
            rm -rf "$_kept_dir"
            _kept_maker=$1
            shift
            mkdir "$_kept_dir" &&
                "$_kept_maker" "$_kept_dir" "$@" &&
                touch "$_kept_dir/.corral-kept" || { rm -rf "$_kept_dir"; exit 1; }
        fi
    ) 9>"$_kept_dir.lock" || return 1
    # an earlier run's own install where the link goes (not a link): replaced
    [ -L "$_kept_link" ] || rm -rf "$_kept_link"
    ln -sfn "$_kept_dir" "$_kept_link"
}
