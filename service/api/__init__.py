"""HTTP routes, one module per resource; they validate and translate, the Recommender acts."""
