# The project's modules, one name a line: the folders of modules/ that hold a module.json
# (each folder is named as the module in the deployment manifests). Sourced by the scripts
# that build, test or run every module, so a new module is picked up by all of them.
#   . scripts/modules.sh; mapfile -t MODULES < <(project_modules)
project_modules() {
    local root="${ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
    local m
    for m in "$root"/modules/*/module.json; do
        [ -f "$m" ] && basename "$(dirname "$m")"
    done
}
