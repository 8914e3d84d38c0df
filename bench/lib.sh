# Helpers shared by the bench scripts (sourced, not run).

# The median of the numbers on standard input, one per line.
median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# CPU time (user + system, in clock ticks) a process has used so far.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# Column $2 of the result lines that start with $1, reduced to its median.
column_median() { grep "^$1 " "$RESULTS" | awk -v c="$2" '{ print $c }' | median; }

ticks=$(getconf CLK_TCK)
