"""Hand a chosen method over to the libraries people train with: Hugging Face peft and AdapterHub."""
