using System.Reflection;

namespace SEmigrate.Workers.Tests;

/// <summary>References point one way: Contracts at the bottom, Workers on top (DESIGN.md).</summary>
public class ArchitectureTests
{
    [Theory]
    [InlineData("SEmigrate.Contracts", new string[0])]
    [InlineData("SEmigrate.Guest", new[] { "SEmigrate.Contracts" })]
    [InlineData("SEmigrate.Introspection", new[] { "SEmigrate.Contracts", "SEmigrate.Guest" })]
    [InlineData("SEmigrate.Sealing", new[] { "SEmigrate.Contracts" })]
    [InlineData("SEmigrate.MemoryServer", new[] { "SEmigrate.Contracts", "SEmigrate.Sealing" })]
    [InlineData("SEmigrate.Activities", new[] { "SEmigrate.Contracts", "SEmigrate.MemoryServer", "SEmigrate.Sealing", "SEmigrate.Guest", "SEmigrate.Introspection" })]
    [InlineData("SEmigrate.Workflows", new[] { "SEmigrate.Contracts", "SEmigrate.Activities", "SEmigrate.MemoryServer", "SEmigrate.Sealing", "SEmigrate.Guest", "SEmigrate.Introspection" })]
    public void Project_references_only_the_layers_below(string project, string[] allowed)
    {
        var references = Assembly.Load(project).GetReferencedAssemblies()
            .Select(a => a.Name!)
            .Where(n => n.StartsWith("SEmigrate.", StringComparison.Ordinal) || n == "semigrate");
        Assert.All(references, r => Assert.Contains(r, allowed));
    }
}
