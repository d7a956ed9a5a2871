#!/usr/bin/env bash
# mutate.sh: mutation testing of libmha's tests. Plants the named bugs of
# scripts/mutants.txt one at a time in a scratch copy of the tree, rebuilds
# it incrementally, runs each mutant's suites with an empty kernel cache,
# and reports whether a test caught the bug. A survivor is a missing test:
# add the test that kills it, or mark the mutant equivalent in the list
# with the reason.
#
#   scripts/mutate.sh                 every mutant of the list
#   scripts/mutate.sh NAME|GLOB...    those mutants (cpu_*, vk_attention_causal_off_by_one)
#   scripts/mutate.sh --check         only check that every pattern matches
#   scripts/mutate.sh --list          names and descriptions
#
# Exits 1 when a mutant that is not equivalent survives, a pattern no
# longer matches exactly once, or a mutant does not build (so the list
# stays true to the code). MHA_MUTATE_DIR sets the scratch directory
# (default /tmp/mha-mutate-$UID: src/, build/, logs/ with one log per
# mutant), MHA_MUTANTS the list, MHA_MUTATE_JOBS the build jobs (2).
set -euo pipefail
shopt -u patsub_replacement 2>/dev/null || true # '&' in replacements is literal
export LC_ALL=C

root=$(cd "$(dirname "$0")/.." && pwd)
list=${MHA_MUTANTS:-$root/scripts/mutants.txt}
work=${MHA_MUTATE_DIR:-/tmp/mha-mutate-$(id -u)}
jobs=${MHA_MUTATE_JOBS:-2}
src=$work/src build=$work/build logs=$work/logs
export MHA_REQUIRE=${MHA_REQUIRE-vulkan,opencl}
export MHA_REQUIRE_VULKAN=${MHA_REQUIRE_VULKAN-1}
export MHA_REQUIRE_OPENCL=${MHA_REQUIRE_OPENCL-1}

usage() { sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; }

# ---- the list -------------------------------------------------------------

# Stanzas of the list, parsed into parallel arrays indexed by mutant.
names=() files=() abouts=() suites=() devices=() finds=() repls=() equivs=()

parse_list() {
    local line n=-1 key value
    while IFS= read -r line || [[ -n $line ]]; do
        [[ $line =~ ^[[:space:]]*(#|$) ]] && continue
        if [[ $line =~ ^\[([A-Za-z0-9_]+)\]$ ]]; then
            n=$((n + 1))
            names[n]=${BASH_REMATCH[1]}
            files[n]='' abouts[n]='' suites[n]='' devices[n]=''
            finds[n]='' repls[n]='' equivs[n]=''
            continue
        fi
        key=${line%%:*}
        value=${line#*:}
        value=${value# } # one space after the colon; the rest is literal
        ((n >= 0)) || { echo "$list: '$line' before the first [name]" >&2; exit 1; }
        case $key in
        file) files[n]=$value ;;
        about) abouts[n]=$value ;;
        suites) suites[n]=$value ;;
        devices) devices[n]=$value ;;
        find) finds[n]=$value ;;
        replace) repls[n]=$value ;;
        equivalent) equivs[n]=$value ;;
        *) echo "$list: unknown key '$key' in [${names[n]}]" >&2; exit 1 ;;
        esac
    done <"$list"
    local i
    for i in "${!names[@]}"; do
        if [[ -z ${files[i]} || -z ${finds[i]} || -z ${abouts[i]} ||
              ( -z ${suites[i]} && -z ${equivs[i]} ) ]]; then
            echo "$list: [${names[i]}] needs file, about, find and suites" >&2
            exit 1
        fi
    done
}

# Indices of the mutants named by the arguments (names or globs), or all.
select_mutants() {
    local i arg hit
    if (($# == 0)); then
        selected=("${!names[@]}")
        return
    fi
    selected=()
    for arg in "$@"; do
        hit=0
        for i in "${!names[@]}"; do
            # shellcheck disable=SC2053 # the argument is a glob on purpose
            if [[ ${names[i]} == $arg ]]; then
                selected+=("$i")
                hit=1
            fi
        done
        ((hit)) || { echo "mutate.sh: no mutant named '$arg'" >&2; exit 1; }
    done
}

# ---- the scratch tree -------------------------------------------------------

# Copies the files git knows (tracked and untracked, not ignored) into src/
# where they differ, so a rerun rebuilds only what changed.
sync_tree() {
    local f
    mkdir -p "$src" "$logs"
    while IFS= read -r -d '' f; do
        [[ -f $root/$f ]] || continue
        if ! cmp -s "$root/$f" "$src/$f"; then
            mkdir -p "$(dirname "$src/$f")"
            cp "$root/$f" "$src/$f"
        fi
    done < <(git -C "$root" ls-files -z --cached --others --exclude-standard)
}

configure() {
    [[ -f $build/CMakeCache.txt ]] && return
    echo "configuring $build"
    cmake -S "$src" -B "$build" -DMHA_WERROR=ON >"$logs/configure.log" 2>&1 ||
        { cat "$logs/configure.log"; exit 1; }
}

# How often find occurs in the original of file (text of the tree's copy).
occurrences() {
    local text=$1 find=$2 rest
    rest=${text//"$find"/}
    echo $(((${#text} - ${#rest}) / ${#find}))
}

# ---- one mutant -------------------------------------------------------------

# Sets result to caught, survived, equivalent, no-match or build-error.
run_mutant() {
    local i=$1 path=$src/${files[$1]} log=$logs/${names[$1]}.log text count
    if [[ ! -f $path ]]; then
        result="no-match"
        return
    fi
    IFS= read -r -d '' text <"$path" || true
    count=$(occurrences "$text" "${finds[i]}")
    if ((count != 1)); then
        result="no-match"
        echo "pattern found $count times in ${files[i]}" >"$log"
        return
    fi
    if [[ -n ${equivs[i]} || $check_only == 1 ]]; then
        result=$([[ -n ${equivs[i]} ]] && echo equivalent || echo matches)
        return
    fi
    printf '%s' "${text/"${finds[i]}"/"${repls[i]}"}" >"$path"
    if ! cmake --build "$build" -j"$jobs" >"$log" 2>&1; then
        result="build-error"
    else
        local cache=$work/cache-${names[i]} regex
        rm -rf "$cache" "$build/cache"
        regex="^($(tr ' ,' '||' <<<"${suites[i]}"))\$"
        if MHA_CACHE_DIR=$cache MHA_TEST_DEVICE=${devices[i]:-${MHA_TEST_DEVICE:-}} \
            ctest --test-dir "$build" -R "$regex" --output-on-failure \
            --timeout 900 >>"$log" 2>&1; then
            result=survived
        else
            result=caught
        fi
        rm -rf "$cache" "$build/cache"
    fi
    printf '%s' "$text" >"$path" # a fresh mtime: the next build undoes it
}

# ---- main -------------------------------------------------------------------

check_only=0
case ${1:-} in
-h | --help) usage; exit 0 ;;
--check) check_only=1; shift ;;
--list)
    parse_list
    for i in "${!names[@]}"; do
        printf '%-36s %s\n' "${names[i]}" "${abouts[i]}"
    done
    exit 0
    ;;
esac

parse_list
select_mutants "$@"
sync_tree
((check_only)) || configure
((check_only)) || cmake --build "$build" -j"$jobs" >"$logs/build.log" 2>&1 ||
    { tail -30 "$logs/build.log"; echo "mutate.sh: the unmutated tree does not build" >&2; exit 1; }

start=$SECONDS
caught=0 survived=0 equivalent=0 broken=0
for i in "${selected[@]}"; do
    t0=$SECONDS
    run_mutant "$i"
    case $result in
    caught) caught=$((caught + 1)) ;;
    survived) survived=$((survived + 1)) ;;
    equivalent) equivalent=$((equivalent + 1)) ;;
    matches) ;;
    *) broken=$((broken + 1)) ;;
    esac
    printf '%-12s %-36s %4ds  %s\n' "$result" "${names[i]}" $((SECONDS - t0)) \
        "${abouts[i]}"
done

total=${#selected[@]}
if ((check_only)); then
    echo "$total mutants checked, $broken patterns do not match exactly once"
    exit $((broken > 0))
fi
scored=$((caught + survived))
score=$((scored > 0 ? 100 * caught / scored : 100))
echo "mutants: $total, caught: $caught, survived: $survived," \
     "equivalent: $equivalent, broken (no match or no build): $broken"
echo "score: $score% ($caught/$scored) in $((SECONDS - start))s; logs in $logs"
exit $((survived > 0 || broken > 0))
