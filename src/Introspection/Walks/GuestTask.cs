namespace SEmigrate.Introspection.Walks;

/// <summary>A task from the guest's task list; Mm is 0 for kernel threads.</summary>
public sealed record GuestTask(int Pid, string Comm, ulong Address, ulong Mm);
