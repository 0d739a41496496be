"""Tasks: one module per algorithmic task, each holding its data, loss and metrics.

Import the one you need (`from toymech.tasks import grokking`):

  text_sum  study 1: regress x + y from the text "x + y = ?"
  reverse   study 2: reverse the input and add 1 mod 4
  grokking  study 3: addition of two numbers, modulo p (Nanda et al.'s modular
            addition) or plain (a + b with a, b in 0..p-1), as `[a, b, =]`
  sum_digits  study 4: `[a1..a4, +, b1..b4, =, c1..c4]`, the sum digits
              predicted one position early
"""
