"""Command-line programs: `pyfastmta [-c DIR] COMMAND ...`, named as Postfix names them."""
