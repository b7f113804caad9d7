namespace SEmigrate.Guest.Memory;

/// <summary>Guest-physical pages [FirstPfn, FirstPfn + Pages) that the guest has; the first
/// PresentPages of them have bytes in the file (fewer when a dump is truncated).</summary>
public sealed record MemoryRange(ulong FirstPfn, ulong Pages, ulong PresentPages, ulong FileOffset)
{
    public ulong EndPfn => FirstPfn + Pages;
}
