# Reads the link map lld writes for comfy-init (-Map) and prints its hot-text order for lld's
# --symbol-ordering-file (scripts/build.sh): the begin marker, the mangled name of every function
# whose name (demangled, without its ::h<hash>) is listed in `list` (scripts/hot-text.txt), in
# the list's order, then the end marker. src/resident.rs keeps the pages between the markers.
#
#   awk -v list=scripts/hot-text.txt -f scripts/hot-text.awk MAP
#   awk -v names=1 -f scripts/hot-text.awk MAP    every function: "MANGLED<tab>NAME" (hot-text.sh)
#
# A map line is "VMA LMA SIZE ALIGN NAME": NAME is an output section (".text"), an input section
# ("file.o:(.text._ZN...E)") or a symbol defined in the input section above it (demangled).
BEGIN {
    while ((getline line < list) > 0) {
        if (line ~ /^#/ || line == "") continue
        if (!(line in rank)) rank[line] = ++wanted
    }
    close(list)
}
/:\(/ {
    section = $0
    sub(/^.*:\(/, "", section)
    sub(/\)$/, "", section)
    next
}
{
    name = $0
    if (!sub(/^ *[0-9a-f]+ +[0-9a-f]+ +[0-9a-f]+ +[0-9]+ +/, "", name)) next
    if (name ~ /^\./) { section = ""; next } # an output section
    if (section !~ /^\.text/) next
    key = name
    sub(/::h[0-9a-f]+$/, "", key)
    # Rust functions have a section of their own, named after the mangled symbol; a C function
    # (glibc) is named as it is printed.
    symbol = section
    sub(/^\.text\.(unlikely\.|hot\.)?/, "", symbol)
    if (symbol !~ /^_(ZN|R)/) symbol = name
    if (names) { print symbol "\t" key; next }
    if (!(key in rank)) next
    if (symbol in seen) next
    seen[symbol] = 1
    found[rank[key]] = found[rank[key]] symbol "\n"
}
END {
    if (names) exit
    print "comfy_init_hot_text_begin"
    for (i = 1; i <= wanted; i++) printf "%s", found[i]
    print "comfy_init_hot_text_end"
}
