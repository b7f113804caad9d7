namespace SEmigrate.Introspection.Kernel;

/// <summary>Guest memory or a kernel profile is not what a sane kernel would hold: corrupted, forged,
/// or of another kernel. Callers turn it into a diagnostic and fail closed.</summary>
public sealed class GuestDataException(string message) : Exception(message);
