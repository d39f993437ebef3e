"""What the verbs do: evaluate, generate, classify, score, check (doctor), export, eval-fid."""
