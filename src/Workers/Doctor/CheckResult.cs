namespace SEmigrate.Workers.Doctor;

/// <summary>One line of `semigrate doctor`: a failed required check makes the command fail.</summary>
public sealed record CheckResult(string Name, bool Ok, bool Required, string Detail);
