"""placeholder"""
import sys
print("autoload-armed", file=sys.stderr)
