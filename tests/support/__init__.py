"""What several test modules share: builders and checkers of the APIs' event streams."""
