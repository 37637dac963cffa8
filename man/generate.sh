#!/usr/bin/env bash
# Write the manual pages mpistage(1) and mpistage-sbcast(1) from the commands' own argument
# parsers (argparse-manpage, in the test extra); tests/test_manpages.py keeps them in step.
#   bash man/generate.sh          # after changing an option or its help
set -euo pipefail
cd "$(dirname "$0")/.."
version=$(python -c "import mpistage; print(mpistage.__version__)")
page() {  # page PROG MODULE DESCRIPTION
    argparse-manpage --module "$2" --function build_parser --prog "$1" --manual-section 1 \
        --version "$version" --project-name mpistage --description "$3" --manual-title "mpistage manual" \
        --output "man/$1.1"
}
page mpistage mpistage.cli.parser "stage a file or tree from one MPI rank to every node's local storage"
page mpistage-sbcast mpistage.cli.sbcast "sbcast's interface, staged by mpistage from a batch script"
