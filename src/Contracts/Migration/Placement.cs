namespace SEmigrate.Contracts.Migration;

/// <summary>The guest pages in [<paramref name="FirstPfn"/>, <paramref name="EndPfn"/>) go to
/// <paramref name="Host"/>; <paramref name="Pages"/> of them are guest memory (the rest are holes).</summary>
public sealed record Assignment(string Host, long FirstPfn, long EndPfn, long Pages);

/// <summary>Where every page goes: the main host's range first, then the sub-hosts'.</summary>
public sealed record PlacementPlan(IReadOnlyList<Assignment> Assignments);
